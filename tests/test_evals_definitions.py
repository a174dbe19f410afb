"""The definitions behind retrieval and zero-shot numbers, checked against values worked out independently: R@k at
the edge k = number of candidates, and the prompt-ensemble class weights (CLIP's recipe, computed here with the
model's own ``encode_text`` and torch, not through ``evals.tasks.embeddings``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from eval_helpers import tiny_clip

from evals.tasks.config import EvalConfig
from evals.tasks.retrieval import retrieval_result
from evals.tasks.zeroshot import build_classifier, classification_result


def test_recall_at_k_is_defined_up_to_the_number_of_candidates():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(3, 8), dim=-1)
    texts = F.normalize(torch.randn(6, 8), dim=-1)
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    result = retrieval_result(images, texts, owner, EvalConfig(ks=(3, 4, 6, 7), bootstrap_samples=0))
    # every query's positive is among all its candidates: R@k = 1 exactly at k = number of candidates
    assert result.metrics["t2i_R@3"] == 1.0 and "t2i_R@3" not in result.undefined
    assert result.metrics["i2t_R@6"] == 1.0 and "i2t_R@6" not in result.undefined
    assert result.metrics["t2i_R@4"] is None and "3 candidate images" in result.undefined["t2i_R@4"]
    assert result.metrics["i2t_R@7"] is None and "6 candidate captions" in result.undefined["i2t_R@7"]
    # i2t R@4 with 6 captions, 2 per image: an image misses only when both its captions rank 5th and 6th
    scores = images @ texts.T
    rank_of = scores.argsort(dim=1, descending=True).argsort(dim=1)
    hits = [float(min(int(rank_of[i, j]) for j in range(6) if int(owner[j]) == i) < 4) for i in range(3)]
    assert result.metrics["i2t_R@4"] == sum(hits) / 3


def test_five_classes_define_top5_and_four_do_not():
    emb = F.normalize(torch.randn(10, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    labels = torch.arange(10) % 5
    five = classification_result(emb, labels, F.normalize(torch.randn(5, 8), dim=-1), EvalConfig(bootstrap_samples=0))
    assert five.metrics["top5"] == 1.0
    four = classification_result(
        emb, labels % 4, F.normalize(torch.randn(4, 8), dim=-1), EvalConfig(bootstrap_samples=0)
    )
    assert four.metrics["top5"] is None and "4 classes" in four.undefined["top5"]


def test_class_weights_are_the_renormalised_mean_of_normalised_prompt_embeddings():
    model, tokenizer, _ = tiny_clip(seed=3)
    classnames = ["cat", "dog", "red car"]
    templates = ["a photo of a {c}.", "a blurry picture of the {c}.", "{c}"]
    ours = build_classifier(model, tokenizer, classnames, templates, EvalConfig(batch_size=4))
    with torch.no_grad():
        reference = []
        for name in classnames:
            tokens = tokenizer([t.format(c=name) for t in templates])
            prompts = F.normalize(model.encode_text(tokens).float(), dim=-1)
            mean = prompts.mean(dim=0)
            reference.append(mean / mean.norm())
    reference = torch.stack(reference)
    assert ours.shape == (3, reference.shape[1])
    torch.testing.assert_close(ours.float(), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(3), atol=1e-6, rtol=0)
    assert float(mean.norm()) < 0.999  # the templates differ, so the re-normalisation is not a no-op here
