"""Chunked ranking of positives, ties broken fairly: the memory-bounded replacement for a full similarity matrix + top-k.

For a query q with positive set P(q), s(q, c) = scale * <q, c> and best(q) = max_{p in P(q)} s(q, p):

    above(q)          = #{ negatives c : s(q, c) > best(q) }
    tied_negatives(q) = #{ negatives c : s(q, c) == best(q) }
    tied_positives(q) = #{ positives p : s(q, p) == best(q) }      (>= 1 when q has a positive)

"==" is exact equality, made reliable for identical candidates: candidates with bitwise-identical embeddings are
scored once (``torch.unique`` over rows, each unique row weighted by its copies), because the same embedding scored
in two GEMM columns can differ in the last bit and a six-way tie of identical class weights would otherwise be broken
by rounding (measured: top-1 0.128 instead of 1/6). Callers encode identical texts once so identical class names get
bitwise-identical weights. Near-ties between different embeddings are real comparisons; no tolerance is used (on
Flickr8k test with a random tiny CLIP, an unrelated negative lies 6.7e-8 from a positive scored 0.093, below one
float32 ulp at 1.0, and a tolerance would call it a tie).

**Tie rule: the expected value under random tie-breaking** (a fair evaluator's coin, never the true answer's
favour). "Some positive is in the top k" happens with probability

    P(hit@k) = 0                                        if k <= above
             = 1 - C(t, k - above) / C(t + m, k - above)   otherwise   (t tied negatives, m tied positives),

the chance that the k - above slots left are not all taken by tied negatives when the t + m tied candidates are in
random order (0 <= P <= 1; equal to the plain indicator rank < k when nothing ties). Six classes all named "missile"
give top-1 = 1/6 per image, as CLIP_benchmark's ``torch.topk`` does on average; the old rule (rank = above, ties to
the positive) gave 1. Per-query values are these probabilities, so means, bootstrap intervals and paired tests use
them unchanged. Queries with any tied negative are counted (``PositiveRanks.tied_queries``) for the records.

Queries are processed in row blocks against all candidates, so at most ``block`` scores (plus boolean copies)
exist at once, and best(q) is read from the same matrix product it is compared with. Non-finite scores raise
``BrokenModelError``: a NaN compares false with everything, which would make every query a hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from harness_infra.errors import BrokenModelError


@dataclass(frozen=True)
class PositiveRanks:
    """Per-query counts (int64 tensors of length Nq; all -1 where a query has no positive), see the module docstring."""

    above: torch.Tensor
    tied_negatives: torch.Tensor
    tied_positives: torch.Tensor

    @property
    def has_positive(self) -> torch.Tensor:
        """Bool mask of the queries that have at least one positive (the ones that count)."""
        return self.above >= 0

    @property
    def tied_queries(self) -> int:
        """Queries (with a positive) whose best positive ties with at least one negative."""
        return int(((self.tied_negatives > 0) & self.has_positive).sum())

    def hit_probability(self, k: int) -> np.ndarray:
        """float64 P(hit@k) of every query that has a positive (query order kept), by the tie rule above."""
        valid = self.has_positive
        above = self.above[valid].numpy().astype(np.int64)
        tied = self.tied_negatives[valid].numpy().astype(np.int64)
        pos = self.tied_positives[valid].numpy().astype(np.int64)
        return hit_probability(above, tied, pos, k)


def hit_probability(above: np.ndarray, tied_negatives: np.ndarray, tied_positives: np.ndarray, k: int) -> np.ndarray:
    """P(hit@k) = 1 - C(t, j) / C(t + m, j) with j = k - above (0 when j <= 0, 1 when j > t); float64 array.

    C(t, j) / C(t + m, j) = prod_{i<j} (t - i) / (t + m - i), evaluated as a product of at most min(j, t + 1) terms.
    """
    out = np.zeros(above.shape, dtype=np.float64)
    slots = k - above
    sure = slots > tied_negatives  # more free slots than tied negatives: a positive gets one
    out[sure] = 1.0
    partial = np.flatnonzero((slots > 0) & ~sure)
    for index in partial:
        j, t, m = int(slots[index]), int(tied_negatives[index]), int(tied_positives[index])
        i = np.arange(j, dtype=np.float64)
        out[index] = 1.0 - float(np.prod((t - i) / (t + m - i)))
    return out


def positive_ranks(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    pair_query: torch.Tensor,
    pair_candidate: torch.Tensor,
    block: int = 1 << 24,
    scale: Optional[float] = None,
    device: str = "cpu",
    what: str = "similarity scores",
) -> PositiveRanks:
    """Counts above and tied with the best positive for every query; positives given as (query, candidate) pairs.

    Args:
        queries: Nq x D embeddings. candidates: Nc x D embeddings.
        pair_query, pair_candidate: equal-length integer tensors listing every positive pair once.
        block: max similarity entries per block (rows per block = max(1, block // Nc)).
        scale: optional factor applied to the scores (e.g. 100 for CLIP logits) before ranking.
        device: where the matrix products run.
        what: what the scores are, for the error message.
    Returns:
        PositiveRanks (int64 counts; -1 where a query has no positive).
    Raises:
        BrokenModelError: a NaN or infinite score.
    """
    n_queries = queries.shape[0]
    order = torch.argsort(pair_query, stable=True)
    pair_query, pair_candidate = pair_query[order].long(), pair_candidate[order].long()
    unique, inverse, copies = torch.unique(candidates, dim=0, return_inverse=True, return_counts=True)
    pair_candidate = inverse[pair_candidate]  # positives as unique rows; each pair is still one positive copy
    above = torch.full((n_queries,), -1, dtype=torch.int64)
    tied_neg, tied_pos = above.clone(), above.clone()
    cand, weight = unique.to(device), copies.to(device=device, dtype=torch.float64)
    n_candidates = unique.shape[0]
    rows = max(1, block // max(n_candidates, 1))
    for start in range(0, n_queries, rows):
        stop = min(start + rows, n_queries)
        scores = queries[start:stop].to(device) @ cand.T
        if scale is not None:
            scores = scale * scores
        if not bool(torch.isfinite(scores).all()):
            bad = int((~torch.isfinite(scores)).any(dim=1).sum())
            raise BrokenModelError(
                f"{what}: {bad} of {stop - start} queries in rows {start}-{stop - 1} have NaN or infinite scores"
            )
        lo, hi = torch.searchsorted(pair_query, torch.tensor([start, stop])).tolist()
        local_q = (pair_query[lo:hi] - start).to(device)
        pos_values = scores[local_q, pair_candidate[lo:hi].to(device)]
        best = torch.full((stop - start,), float("-inf"), dtype=scores.dtype, device=device)
        best.scatter_reduce_(0, local_q, pos_values, reduce="amax")
        n_above = ((scores > best[:, None]).double() @ weight).round().long()  # copies of the unique rows above
        n_level = ((scores == best[:, None]).double() @ weight).round().long()
        pos_tied = torch.zeros(stop - start, dtype=torch.int64, device=device)
        pos_tied.scatter_add_(0, local_q, (pos_values == best[local_q]).long())
        has_positive = torch.isfinite(best)
        minus = torch.full_like(n_above, -1)
        above[start:stop] = torch.where(has_positive, n_above, minus).cpu()
        tied_neg[start:stop] = torch.where(has_positive, n_level - pos_tied, minus).cpu()
        tied_pos[start:stop] = torch.where(has_positive, pos_tied, minus).cpu()
    return PositiveRanks(above, tied_neg, tied_pos)


def classification_ranks(
    image_emb: torch.Tensor,
    class_weights: torch.Tensor,
    labels: torch.Tensor,
    block: int = 1 << 24,
    device: str = "cpu",
) -> PositiveRanks:
    """Counts of classes above / tied with the true class among the logits 100 * image @ weights (C x D class weights)."""
    index = torch.arange(image_emb.shape[0])
    return positive_ranks(
        image_emb, class_weights, index, labels.long(), block, scale=100.0, device=device, what="zero-shot logits"
    )


def retrieval_ranks(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    block: int = 1 << 24,
    device: str = "cpu",
) -> Tuple[PositiveRanks, PositiveRanks]:
    """(text->image counts over images, image->text counts over texts: best of the image's own captions)."""
    text_index = torch.arange(text_emb.shape[0])
    t2i = positive_ranks(
        text_emb, image_emb, text_index, text_to_image, block, device=device, what="text->image scores"
    )
    i2t = positive_ranks(
        image_emb, text_emb, text_to_image, text_index, block, device=device, what="image->text scores"
    )
    return t2i, i2t
