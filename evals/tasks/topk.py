"""Chunked ranking of positives: the memory-bounded replacement for a full similarity matrix + top-k.

For a query q with positive set P(q), s(q, c) = scale * <q, c> and best(q) = max_{p in P(q)} s(q, p):

    rank(q) = #{ c : s(q, c) > best(q) }      (only negatives can score above the best positive)

"some positive is in the top k" <=> rank(q) < k, with ties between a positive and a negative resolved in
favour of the positive (``torch.topk`` breaks such ties arbitrarily; with real-valued scores they do not
occur). Queries are processed in row blocks against all candidates, so at most ``block`` scores (plus a
boolean copy) exist at once, and best(q) is read from the same matrix product it is compared with.
Queries without a positive get rank -1.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def positive_ranks(queries: torch.Tensor, candidates: torch.Tensor, pair_query: torch.Tensor, pair_candidate: torch.Tensor,
                   block: int = 1 << 24, scale: Optional[float] = None, device: str = "cpu") -> torch.Tensor:
    """rank(q) as defined above for every query; positives given as (query index, candidate index) pairs.

    Args:
        queries: Nq x D embeddings. candidates: Nc x D embeddings.
        pair_query, pair_candidate: equal-length integer tensors listing every positive pair.
        block: max similarity entries per block (rows per block = max(1, block // Nc)).
        scale: optional factor applied to the scores (e.g. 100 for CLIP logits) before ranking.
        device: where the matrix products run.
    Returns:
        int64 tensor of Nq ranks (-1 where a query has no positive).
    """
    n_queries, n_candidates = queries.shape[0], candidates.shape[0]
    order = torch.argsort(pair_query, stable=True)
    pair_query, pair_candidate = pair_query[order].long(), pair_candidate[order].long()
    ranks = torch.full((n_queries,), -1, dtype=torch.int64)
    cand = candidates.to(device)
    rows = max(1, block // max(n_candidates, 1))
    for start in range(0, n_queries, rows):
        stop = min(start + rows, n_queries)
        scores = queries[start:stop].to(device) @ cand.T
        if scale is not None:
            scores = scale * scores
        lo, hi = torch.searchsorted(pair_query, torch.tensor([start, stop])).tolist()
        local_q = (pair_query[lo:hi] - start).to(device)
        pos_values = scores[local_q, pair_candidate[lo:hi].to(device)]
        best = torch.full((stop - start,), float("-inf"), dtype=scores.dtype, device=device)
        best.scatter_reduce_(0, local_q, pos_values, reduce="amax")
        counts = (scores > best[:, None]).sum(dim=1, dtype=torch.int32).cpu().long()
        has_positive = torch.isfinite(best).cpu()
        ranks[start:stop] = torch.where(has_positive, counts, torch.full_like(counts, -1))
    return ranks


def classification_ranks(image_emb: torch.Tensor, class_weights: torch.Tensor, labels: torch.Tensor,
                         block: int = 1 << 24, device: str = "cpu") -> torch.Tensor:
    """rank of the true class among the logits 100 * image @ weights (C x D class weights)."""
    index = torch.arange(image_emb.shape[0])
    return positive_ranks(image_emb, class_weights, index, labels.long(), block, scale=100.0, device=device)


def retrieval_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor,
                    block: int = 1 << 24, device: str = "cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """(text->image ranks over images, image->text ranks over texts: best of the image's own captions)."""
    text_index = torch.arange(text_emb.shape[0])
    t2i = positive_ranks(text_emb, image_emb, text_index, text_to_image, block, device=device)
    i2t = positive_ranks(image_emb, text_emb, text_to_image, text_index, block, device=device)
    return t2i, i2t


def hits_at(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Per-query hit vector (bool): rank < k, over queries that have a positive (rank >= 0)."""
    valid = ranks >= 0
    return (ranks[valid] < k)
