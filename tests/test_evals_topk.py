"""Chunked positive ranking against a naive full-matrix top-k reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evals.tasks.topk import classification_ranks, hit_probability, positive_ranks, retrieval_ranks
from harness_infra.errors import BrokenModelError


def naive_retrieval_hits(image_emb, text_emb, text_to_image, k):
    """CLIP_benchmark-style reference: full score matrix, torch.topk, any positive in the top k."""
    scores = text_emb @ image_emb.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(text_emb)), text_to_image] = True
    t2i = positive.gather(1, scores.topk(k, dim=1).indices).any(dim=1)
    i2t = positive.T.gather(1, scores.T.topk(k, dim=1).indices).any(dim=1)
    has_caption = positive.any(dim=0)
    return t2i, i2t[has_caption]


def random_unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


@pytest.mark.parametrize("block", [1024, 4096, 1 << 24])
def test_retrieval_ranks_match_full_matrix_topk(block):
    n_images, d = 97, 16
    g = torch.Generator().manual_seed(3)
    counts = torch.randint(1, 6, (n_images,), generator=g)
    counts[[5, 40]] = 0  # images without captions are distractors, never queries
    text_to_image = torch.repeat_interleave(torch.arange(n_images), counts)
    image_emb = random_unit(n_images, d, 1)
    text_emb = F.normalize(image_emb[text_to_image] + 0.9 * random_unit(len(text_to_image), d, 2), dim=-1)
    t2i, i2t = retrieval_ranks(image_emb, text_emb, text_to_image, block=block)
    assert (~i2t.has_positive).sum() == 2 and (i2t.above[[5, 40]] == -1).all()
    assert t2i.tied_queries == 0 and i2t.tied_queries == 0  # random real-valued scores never tie
    for k in (1, 5, 10):
        ref_t2i, ref_i2t = naive_retrieval_hits(image_emb, text_emb, text_to_image, k)
        assert np.array_equal(t2i.hit_probability(k), ref_t2i.numpy().astype(float))
        assert np.array_equal(i2t.hit_probability(k), ref_i2t.numpy().astype(float))


def test_rank_is_the_number_of_negatives_scoring_higher():
    queries = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[0.9, 0.1], [1.0, 0.0], [0.5, 0.5], [0.95, 0.0]])
    # positives: candidates 2 (0.5) and 3 (0.95): best = 0.95, only candidate 1 (1.0) is above it
    ranks = positive_ranks(queries, candidates, torch.tensor([0, 0]), torch.tensor([2, 3]), block=1024)
    assert ranks.above.tolist() == [1] and ranks.tied_negatives.tolist() == [0] and ranks.tied_positives.tolist() == [1]
    ranks = positive_ranks(queries, candidates, torch.tensor([0]), torch.tensor([2]), block=1024)
    assert ranks.above.tolist() == [3]


def test_classification_ranks_match_topk_of_logits():
    images, weights = random_unit(300, 8, 4), random_unit(20, 8, 5)
    labels = torch.randint(0, 20, (300,), generator=torch.Generator().manual_seed(6))
    ranks = classification_ranks(images, weights, labels, block=1024)
    logits = 100.0 * images @ weights.T
    for k in (1, 5):
        ref = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
        assert np.array_equal(ranks.hit_probability(k), ref.numpy().astype(float))


def test_memory_bound_rows_per_block():
    # 3 candidates per row x 1024-entry blocks: many small row blocks give the same ranks as one block
    q, c = random_unit(500, 4, 7), random_unit(3, 4, 8)
    pos = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(9))
    small = positive_ranks(q, c, torch.arange(500), pos, block=1024)
    large = positive_ranks(q, c, torch.arange(500), pos, block=1 << 24)
    assert torch.equal(small.above, large.above) and torch.equal(small.tied_negatives, large.tied_negatives)


def brute_force_tie_probability(scores, positive, k):
    """P(some positive in the top k) by enumerating every order of the tied candidates (the definition)."""
    from itertools import permutations

    best = max(s for s, p in zip(scores, positive) if p)
    above = sum(1 for s, p in zip(scores, positive) if s > best and not p)
    tied = [p for s, p in zip(scores, positive) if s == best]
    orders = list(permutations(tied))
    hits = sum(1 for order in orders if any(order[: max(k - above, 0)]))
    return hits / len(orders)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_tie_probability_equals_enumeration_of_random_orders(k):
    # scores of one query over 7 candidates: two positives tie at 0.5 with three negatives, one negative above
    scores = [0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1]
    positive = [False, True, False, True, False, False, False]
    expected = brute_force_tie_probability(scores, positive, k)
    got = hit_probability(np.array([1]), np.array([3]), np.array([2]), k)[0]
    assert got == pytest.approx(expected, abs=1e-12)
    # and positive_ranks counts exactly those (1 above, 3 tied negatives, 2 tied positives)
    q = torch.tensor([[1.0, 0.0]])
    cand = torch.tensor([[s, (1 - s * s) ** 0.5] for s in scores])
    ranks = positive_ranks(q, cand, torch.tensor([0, 0]), torch.tensor([1, 3]))
    assert (ranks.above.item(), ranks.tied_negatives.item(), ranks.tied_positives.item()) == (1, 3, 2)
    assert ranks.hit_probability(k)[0] == pytest.approx(expected, abs=1e-12)


def test_six_identical_class_names_score_one_sixth_not_more():
    # the toy set: 6 classes all named "missile" -> identical class weights; every image ties all 6 classes
    weights = F.normalize(torch.ones(6, 8), dim=-1)
    images = random_unit(60, 8, 1)
    labels = torch.arange(60) % 6
    ranks = classification_ranks(images, weights, labels)
    assert ranks.tied_queries == 60
    assert ranks.hit_probability(1).mean() == pytest.approx(1 / 6)
    assert ranks.hit_probability(5).mean() == pytest.approx(5 / 6)


def test_identical_images_in_retrieval_never_help():
    # images 0 and 1 are the same picture; caption 0 belongs to image 0: a tie with image 1 -> R@1 = 1/2, R@2 = 1
    image = random_unit(1, 8, 2)
    images = torch.cat([image, image, random_unit(3, 8, 3)])
    texts = image.clone()
    ranks = positive_ranks(texts, images, torch.tensor([0]), torch.tensor([0]))
    assert ranks.tied_queries == 1
    assert ranks.hit_probability(1).tolist() == [0.5] and ranks.hit_probability(2).tolist() == [1.0]


def test_nan_scores_are_an_error_not_a_hit():
    q = torch.tensor([[float("nan"), 0.0]])
    with pytest.raises(BrokenModelError, match="NaN"):
        positive_ranks(q, torch.eye(2), torch.tensor([0]), torch.tensor([1]))
