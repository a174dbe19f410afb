"""What a retrieval or zero-shot result records, from hand-made embeddings whose ranks are known by construction:
the task name, every count in ``n``, top-1 / top-5 / mean per-class recall against hand values and sklearn, the
one-line refusals with their exact words, and the broken-model message naming the scores and the rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from evals.tasks.config import EvalConfig
from evals.tasks.retrieval import retrieval_result
from evals.tasks.topk import classification_ranks, positive_ranks, retrieval_ranks
from evals.tasks.zeroshot import build_classifier, classification_result
from harness_infra.errors import BrokenModelError, ConfigError

CFG = EvalConfig(bootstrap_samples=0, ks=(1, 2))


def axis(i: int, d: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(i), d).double()


def test_classification_result_fields_against_hand_values():
    # class weights are the axes; image i points at class predicted[i] (a hit when that is its label)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predicted = [0, 1, 1, 2, 0, 2]
    images = torch.stack([axis(c) + 0.1 * axis(3) for c in predicted])
    weights = torch.eye(4, dtype=torch.float64)[:3]
    result = classification_result(images, labels, weights, CFG, {"name": "toy"})
    hits = [float(p == int(t)) for p, t in zip(predicted, labels)]
    assert result.task == "zeroshot_classification" and result.dataset == {"name": "toy"}
    # a miss scores 0 for its true class, as does the third class: those two queries tie with a negative
    assert result.n == {"images": 6, "classes": 3, "classes_present": 3, "tied_queries": 2}
    assert result.metrics["top1"] == pytest.approx(4 / 6) and result.per_query["top1"].values.tolist() == hits
    assert result.metrics["mean_per_class_recall"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert result.metrics["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(labels.numpy(), predicted))
    assert (
        result.metrics["top5"] is None
        and result.undefined["top5"] == "top-5 accuracy is undefined with 3 classes (< 5)"
    )


def test_classes_present_and_tied_queries_are_counted():
    weights = torch.stack([axis(0), axis(0), axis(1)])  # classes 0 and 1 share a weight: their images tie
    labels = torch.tensor([0, 0, 2])
    result = classification_result(torch.stack([axis(0), axis(0), axis(1)]), labels, weights, CFG)
    assert result.n == {"images": 3, "classes": 3, "classes_present": 2, "tied_queries": 2}
    assert result.per_query["top1"].values.tolist() == [0.5, 0.5, 1.0]  # a tie of two: half a hit, never a whole one


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0]])
def test_labels_outside_the_class_names_are_one_line_errors(labels):
    with pytest.raises(ConfigError) as caught:
        classification_result(torch.stack([axis(0), axis(1)]), torch.tensor(labels), torch.eye(4)[:3].double(), CFG)
    low, high = min(labels), max(labels)
    assert str(caught.value) == f"labels range over [{low}, {high}] but there are 3 class names"


@pytest.mark.parametrize("classnames, templates", [([], ["{c}"]), (["a"], [])])
def test_a_classifier_needs_class_names_and_templates(classnames, templates):
    with pytest.raises(ConfigError) as caught:
        build_classifier(None, None, classnames, templates, CFG)
    assert str(caught.value) == "zero-shot classification needs at least one class name and one template"


def test_retrieval_result_fields_against_hand_ranks():
    # 3 images on the axes; captions 0, 1 are image 0's, caption 2 image 1's, caption 3 image 2's (and points at image 1)
    images = torch.stack([axis(0), axis(1), axis(2)])
    texts = torch.stack([axis(0), axis(0) + 0.5 * axis(1), axis(1), axis(1) + 0.2 * axis(2)])
    owner = torch.tensor([0, 0, 1, 2])
    result = retrieval_result(images, texts, owner, CFG, task="long_retrieval", dataset={"name": "toy"})
    assert result.task == "long_retrieval" and result.dataset == {"name": "toy"}
    # image 1's own caption 2 scores 1, as does caption 3: one tied image query
    assert result.n == {"images": 3, "texts": 4, "image_queries": 3, "tied_t2i_queries": 0, "tied_i2t_queries": 1}
    assert result.per_query["t2i_R@1"].values.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert result.per_query["t2i_R@2"].values.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert result.per_query["i2t_R@1"].values.tolist() == [1.0, 0.5, 1.0]  # the tie of two: half a hit
    assert retrieval_result(images, texts, owner, CFG).task == "retrieval"


def test_retrieval_without_any_positive_is_a_one_line_error():
    images, texts, owner = (
        torch.stack([axis(0), axis(1)]),
        torch.zeros(0, 4, dtype=torch.float64),
        torch.zeros(0, dtype=torch.int64),
    )
    with pytest.raises(ConfigError) as caught:
        retrieval_result(images, texts, owner, CFG, dataset={"name": "toy"})
    assert str(caught.value) == "retrieval on toy: no query has a positive (0 captions, 2 images)"
    with pytest.raises(ConfigError) as caught:
        retrieval_result(images, texts, owner, CFG)
    assert str(caught.value) == "retrieval on the data set: no query has a positive (0 captions, 2 images)"


def test_non_finite_scores_name_the_scores_and_the_rows():
    good = torch.stack([axis(0), axis(1), axis(2)])
    bad = good.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(BrokenModelError) as caught:
        retrieval_ranks(good, bad, torch.tensor([0, 1, 2]), block=6)  # 2 rows per block: the NaN is in rows 0-1
    assert str(caught.value) == "text->image scores: 1 of 2 queries in rows 0-1 have NaN or infinite scores"
    with pytest.raises(BrokenModelError) as caught:
        positive_ranks(bad, good, torch.arange(3), torch.arange(3), block=3)  # 1 row per block
    assert str(caught.value) == "similarity scores: 1 of 1 queries in rows 1-1 have NaN or infinite scores"
    with pytest.raises(BrokenModelError) as caught:
        classification_ranks(bad, good, torch.tensor([0, 1, 2]))
    assert str(caught.value) == "zero-shot logits: 1 of 3 queries in rows 0-2 have NaN or infinite scores"
    bad[2, 1] = float("inf")
    with pytest.raises(BrokenModelError) as caught:
        classification_ranks(bad, good, torch.tensor([0, 1, 2]))
    assert str(caught.value) == "zero-shot logits: 2 of 3 queries in rows 0-2 have NaN or infinite scores"


def test_the_block_size_changes_no_count():
    rng = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(7, 5, generator=rng), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(9, 5, generator=rng), dim=-1)
    owner = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 3])
    whole = retrieval_ranks(images, texts, owner)
    for block in (1, 9, 10, 20):
        for ours, theirs in zip(retrieval_ranks(images, texts, owner, block=block), whole):
            assert torch.equal(ours.above, theirs.above) and torch.equal(ours.tied_negatives, theirs.tied_negatives)
    # the hand count: how many images score above each caption's own image
    scores = texts @ images.T
    own = scores[torch.arange(9), owner]
    assert whole[0].above.tolist() == (scores > own[:, None]).sum(dim=1).tolist()
    assert np.array_equal(whole[0].hit_probability(1), (whole[0].above == 0).double().numpy())
