"""Bootstrap confidence intervals and paired checkpoint comparisons on per-query value vectors.

A metric is the mean of per-query values v_i (hit = 1.0, miss = 0.0), or - when ``groups`` is given
(mean per-class recall) - the mean over the groups present of the per-group means.

Bootstrap: resample the n queries with replacement, recompute the metric, take the percentile interval.
A resample only matters through how many times each distinct (group, value) category is drawn, and those
counts are Multinomial(n, category frequencies). Hit vectors have few categories (2, or 2 x classes), so
the resamples are drawn as multinomial counts: O(resamples x categories) instead of O(resamples x n), with
exactly the same distribution as index resampling (which is used when values take many distinct levels).

Paired test (checkpoints A and B on the same queries): the difference metric(A) - metric(B); a paired
bootstrap interval (the same resampled queries for both); a two-sided sign-flip permutation p-value
(under H0 each query's (a_i, b_i) is exchangeable). Every group is present in every permutation, so the
permuted difference is sum_i s_i x_i with x_i = w_i (a_i - b_i) and random signs s_i; queries sharing
|x_i| = m contribute m (2 Binomial(c_m, 1/2) - c_m), again drawn per distinct level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np

CHUNK_ENTRIES = 1 << 22  # resampled entries held at once
MAX_LEVELS = 4096  # more distinct categories than this: resample indices instead of counts


@dataclass(frozen=True)
class Resampling:
    """Resampling settings of intervals and paired tests (``EvalConfig`` carries the same fields, with these defaults)."""

    bootstrap_samples: int = 1000
    permutation_samples: int = 10000
    confidence: float = 0.95
    seed: int = 0


@dataclass
class QueryValues:
    """Per-query values of one metric (and optional group labels for a class-balanced mean)."""

    values: np.ndarray
    groups: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64).reshape(-1)
        if self.groups is not None:
            self.groups = np.asarray(self.groups).reshape(-1)
            if self.groups.shape != self.values.shape:
                raise ValueError(f"groups has {self.groups.size} entries for {self.values.size} values")
            _, self.groups = np.unique(self.groups, return_inverse=True)

    @property
    def n(self) -> int:
        """Number of queries."""
        return int(self.values.size)

    def statistic(self) -> float:
        """The metric on the full sample."""
        groups = self.groups[None, :] if self.groups is not None else None
        return float(weighted_stat(self.values[None, :], groups, np.ones((1, self.n)))[0])


def weighted_stat(values: np.ndarray, groups: Optional[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Metric per row of R x K arrays where entry j of a row counts ``weights[r, j]`` times:
    sum(w v) / sum(w), or with groups the mean over present groups of sum_g(w v) / sum_g(w)."""
    values = np.broadcast_to(values, weights.shape)
    if groups is None:
        return (weights * values).sum(axis=1) / weights.sum(axis=1)
    groups = np.broadcast_to(groups, weights.shape)
    rows = weights.shape[0]
    n_groups = int(groups.max()) + 1
    flat = (groups + n_groups * np.arange(rows)[:, None]).reshape(-1)
    totals = np.bincount(flat, weights=(weights * values).reshape(-1), minlength=rows * n_groups).reshape(
        rows, n_groups
    )
    counts = np.bincount(flat, weights=weights.reshape(-1), minlength=rows * n_groups).reshape(rows, n_groups)
    present = counts > 0
    means = np.divide(totals, counts, out=np.zeros_like(totals), where=present)
    return means.sum(axis=1) / present.sum(axis=1)


def _categories(columns: Tuple[np.ndarray, ...]) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct rows of the stacked per-query columns (K x C) and their frequencies (K)."""
    table = np.stack(columns, axis=1)
    levels, counts = np.unique(table, axis=0, return_counts=True)
    return levels, counts


def _resamples(
    n: int, columns: Tuple[np.ndarray, ...], samples: int, rng: np.random.Generator
) -> Iterator[Tuple[Tuple[np.ndarray, ...], np.ndarray]]:
    """Chunks of bootstrap resamples as (per-column R x K (or 1 x K) arrays, R x K draw counts)."""
    levels, freq = _categories(columns)
    if len(levels) <= MAX_LEVELS:
        per_chunk = max(1, CHUNK_ENTRIES // len(levels))
        cols = tuple(levels[None, :, c] for c in range(levels.shape[1]))
        for start in range(0, samples, per_chunk):
            rows = min(per_chunk, samples - start)
            yield cols, rng.multinomial(n, freq / n, size=rows).astype(np.float64)
        return
    per_chunk = max(1, CHUNK_ENTRIES // n)
    for start in range(0, samples, per_chunk):
        idx = rng.integers(0, n, size=(min(per_chunk, samples - start), n))
        yield tuple(col[idx] for col in columns), np.ones(idx.shape)


def _columns(metric: QueryValues, *others: QueryValues) -> Tuple[np.ndarray, ...]:
    """Per-query columns: values of each metric, then the groups when present."""
    cols = (metric.values,) + tuple(o.values for o in others)
    return cols + ((metric.groups.astype(np.float64),) if metric.groups is not None else ())


def bootstrap_distribution(metric: QueryValues, samples: int, seed: int = 0) -> np.ndarray:
    """The metric on ``samples`` bootstrap resamples of the queries (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for cols, weights in _resamples(metric.n, _columns(metric), samples, rng):
        groups = cols[1].astype(np.int64) if metric.groups is not None else None
        out.append(weighted_stat(cols[0], groups, weights))
    return np.concatenate(out) if out else np.empty(0)


def percentile_interval(distribution: np.ndarray, confidence: float = 0.95) -> Tuple[float, float]:
    """Percentile interval: the (1 - c)/2 and (1 + c)/2 quantiles (numpy's linear interpolation)."""
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(distribution, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    metric: QueryValues, samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Optional[Tuple[float, float]]:
    """Percentile bootstrap interval of the metric (None when there are no queries or no resamples)."""
    if metric.n == 0 or samples <= 0:
        return None
    return percentile_interval(bootstrap_distribution(metric, samples, seed), confidence)


@dataclass
class PairedResult:
    """Checkpoint A minus checkpoint B on the same queries."""

    difference: float
    interval: Optional[Tuple[float, float]]
    p_value: float
    n: int
    method: str = "paired bootstrap percentile interval; two-sided sign-flip permutation p-value"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "difference": self.difference,
            "interval": list(self.interval) if self.interval else None,
            "p_value": self.p_value,
            "n": self.n,
            "method": self.method,
        }


def _linear_weights(metric: QueryValues) -> np.ndarray:
    """w such that the metric = sum_i w_i v_i on the full sample: 1/n, or 1/(G * n_group(i))."""
    if metric.groups is None:
        return np.full(metric.n, 1.0 / metric.n)
    counts = np.bincount(metric.groups)
    return 1.0 / (int((counts > 0).sum()) * counts[metric.groups])


def permutation_distribution(x: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``samples`` draws of sum_i s_i x_i with independent random signs s_i (drawn per distinct |x_i|)."""
    magnitudes, counts = np.unique(np.abs(x[x != 0]), return_counts=True)
    if magnitudes.size == 0:
        return np.zeros(samples)
    if magnitudes.size <= MAX_LEVELS:
        flips = rng.binomial(counts[None, :], 0.5, size=(samples, magnitudes.size))
        return (2 * flips - counts[None, :]) @ magnitudes
    out = []
    per_chunk = max(1, CHUNK_ENTRIES // x.size)
    for start in range(0, samples, per_chunk):
        signs = np.where(rng.random((min(per_chunk, samples - start), x.size)) < 0.5, -1.0, 1.0)
        out.append(signs @ x)
    return np.concatenate(out)


def paired_test(
    a: QueryValues,
    b: QueryValues,
    bootstrap_samples: int = 1000,
    permutation_samples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedResult:
    """metric(a) - metric(b) on the same queries, its paired bootstrap interval and permutation p-value.

    p = (1 + #{|d*| >= |d|}) / (1 + permutation_samples); identical inputs give d = 0, interval (0, 0), p = 1.
    """
    if a.n != b.n:
        raise ValueError(f"paired test needs the same queries: {a.n} vs {b.n}")
    if (a.groups is None) != (b.groups is None) or (a.groups is not None and not np.array_equal(a.groups, b.groups)):
        raise ValueError("paired test needs the same group labels for both checkpoints")
    if a.n == 0:
        raise ValueError("paired test needs at least one query")
    diff = a.statistic() - b.statistic()
    rng = np.random.default_rng(seed)
    interval = None
    if bootstrap_samples > 0:
        dist = []
        for cols, weights in _resamples(a.n, _columns(a, b), bootstrap_samples, rng):
            groups = cols[2].astype(np.int64) if a.groups is not None else None
            dist.append(weighted_stat(cols[0], groups, weights) - weighted_stat(cols[1], groups, weights))
        interval = percentile_interval(np.concatenate(dist), confidence)
    x = _linear_weights(a) * (a.values - b.values)
    permuted = permutation_distribution(x, permutation_samples, rng)
    tolerance = 1e-12 * max(1.0, float(np.abs(x).sum()))
    p_value = (1 + int((np.abs(permuted) >= abs(diff) - tolerance).sum())) / (1 + permutation_samples)
    return PairedResult(float(diff), interval, float(p_value), a.n)
