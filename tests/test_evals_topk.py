"""Chunked positive ranking against a naive full-matrix top-k reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evals.tasks.topk import classification_ranks, hits_at, positive_ranks, retrieval_ranks


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
    assert (i2t == -1).sum() == 2 and (i2t[[5, 40]] == -1).all()
    for k in (1, 5, 10):
        ref_t2i, ref_i2t = naive_retrieval_hits(image_emb, text_emb, text_to_image, k)
        assert torch.equal(hits_at(t2i, k), ref_t2i)
        assert torch.equal(hits_at(i2t, k), ref_i2t)


def test_rank_is_the_number_of_negatives_scoring_higher():
    queries = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[0.9, 0.1], [1.0, 0.0], [0.5, 0.5], [0.95, 0.0]])
    # positives: candidates 2 (0.5) and 3 (0.95): best = 0.95, only candidate 1 (1.0) is above it
    ranks = positive_ranks(queries, candidates, torch.tensor([0, 0]), torch.tensor([2, 3]), block=1024)
    assert ranks.tolist() == [1]
    ranks = positive_ranks(queries, candidates, torch.tensor([0]), torch.tensor([2]), block=1024)
    assert ranks.tolist() == [3]


def test_classification_ranks_match_topk_of_logits():
    images, weights = random_unit(300, 8, 4), random_unit(20, 8, 5)
    labels = torch.randint(0, 20, (300,), generator=torch.Generator().manual_seed(6))
    ranks = classification_ranks(images, weights, labels, block=1024)
    logits = 100.0 * images @ weights.T
    for k in (1, 5):
        ref = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
        assert torch.equal(ranks < k, ref)


def test_memory_bound_rows_per_block():
    # 3 candidates per row x 1024-entry blocks: many small row blocks give the same ranks as one block
    q, c = random_unit(500, 4, 7), random_unit(3, 4, 8)
    pos = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(9))
    small = positive_ranks(q, c, torch.arange(500), pos, block=1024)
    large = positive_ranks(q, c, torch.arange(500), pos, block=1 << 24)
    assert torch.equal(small, large)
