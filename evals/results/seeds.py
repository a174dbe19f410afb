"""Intervals and tests over training seeds: a row of a table is a (model, data, strategy, p, budget) averaged over the
seeds it was trained with, evaluated on one shared test set.

Model (a two-way random-effects layout): the value of query i for the run of seed s is
v_si = mu + a_s + b_i + e_si, with a seed effect a_s (variance sigma_a^2: what a re-run changes), a query effect b_i
(sigma_b^2: which test queries were drawn) and their interaction e_si (sigma_e^2). The row's value is the mean over
its S seeds of the per-seed metric m_s, and its target is mu, the metric expected over training seeds AND over test
queries. Var(mean_s m_s) = sigma_a^2 / S + sigma_b^2 / n + sigma_e^2 / (S n). Two estimable pieces cover it:

- the between-seed variance of m_s, divided by S: estimates sigma_a^2 / S + sigma_e^2 / (S n). The query effect
  cancels in it, because every seed is scored on the same queries;
- the query-level variance of the seed-averaged values vbar_i = mean_s v_si, for the metric's linear weights (a plain
  mean: s^2 / n; a mean of per-class means: sum_g s_g^2 / (G^2 n_g), stratified sampling): estimates
  sigma_b^2 / n + sigma_e^2 / (S n).

Their sum counts sigma_e^2 / (S n) twice (conservative by at most that; with S >= 2 it is at most half the
query term). The interval is mean +- t_{df} x sqrt(sum), df by Welch-Satterthwaite from S - 1 (seed term) and
n - G (query term) degrees of freedom. Why not a two-level bootstrap (seeds, then queries within a seed): with
S = 3 seeds a bootstrap over seeds draws from 10 distinct multisets and its percentile interval behaves like a
normal interval with the variance shrunk by (S - 1) / S and no t correction (about 80% coverage instead of 95% at
S = 3; ``tests/test_seed_intervals.py`` simulates it); and because the queries are shared, resampling them within
each seed independently would miss that b_i is common to all seeds. The t interval with the two components is
exact under normal seed effects and needs nothing the records lack.

Whole-set metrics (FID, KID: no per-query values) get the seed term only, with S - 1 degrees of freedom (each seed's
generated images are its own draw, so their sampling noise is inside the between-seed variance; the shared
reference set is not covered, which the tables say).

Differences between two rows (a p against p = 1): paired by seed when both rows have the same seed set (the per-seed
difference d_s and the per-query seed-averaged difference take the place of m_s and vbar_i: a seed's training data
order and initialisation are shared when the seed is), otherwise Welch (each row's seed term, plus the query term
of the difference of seed-averaged values). The two-sided p-value is the t distribution's at the Satterthwaite df.
A row with one seed has no seed term: it gets no seed-level interval and no test (``SeedEstimate.interval`` None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from evals.results.bootstrap import QueryValues

METHOD = (
    "mean over training seeds +- t x sqrt(between-seed variance / S + query-level variance of the seed-averaged "
    "values), Welch-Satterthwaite df (evals.results.seeds)"
)
WHOLE_SET_METHOD = "mean over training seeds +- t(S - 1) x seed standard error (evals.results.seeds)"


@dataclass(frozen=True)
class SeedEstimate:
    """A row's value over its seeds: ``value`` (mean of the per-seed metrics), ``interval`` (None with one seed),
    ``standard_error``, ``df`` (Satterthwaite degrees of freedom), ``seeds`` (how many), ``p_value`` (two-sided
    test of value = 0, meaningful for a difference; None with one seed) and ``method`` (the text tables print)."""

    value: float
    interval: Optional[Tuple[float, float]]
    standard_error: Optional[float]
    df: Optional[float]
    seeds: int
    p_value: Optional[float]
    method: str


def _stacked(runs: Sequence[QueryValues]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """S x n values of runs on the same queries, and their shared groups. Raises ValueError when the runs are not
    on the same queries (sizes or group labels differ) or there are none."""
    if not runs:
        raise ValueError("a seed-level estimate needs at least one run")
    first = runs[0]
    for other in runs[1:]:
        if other.n != first.n:
            raise ValueError(f"runs of one row must be scored on the same queries: {first.n} vs {other.n} values")
        if (other.groups is None) != (first.groups is None) or (
            first.groups is not None and not np.array_equal(first.groups, other.groups)
        ):
            raise ValueError("runs of one row must be scored on the same queries: their group labels differ")
    if first.n == 0:
        raise ValueError("a seed-level estimate needs at least one query")
    return np.stack([r.values for r in runs]), first.groups


def query_variance(values: np.ndarray, groups: Optional[np.ndarray]) -> Tuple[float, float]:
    """(variance of the metric's linear statistic from query sampling, its degrees of freedom) for per-query values
    ``values`` (n): s^2 / n for a plain mean; with group labels (a mean of per-group means) the stratified
    sum_g s_g^2 / (G^2 n_g) with n - G degrees of freedom; groups of one query contribute nothing (no variance
    to estimate)."""
    if groups is None:
        groups = np.zeros(values.size, dtype=np.int64)
    labels = np.unique(groups)
    total, df = 0.0, 0
    for label in labels:
        member = values[groups == label]
        if member.size >= 2:
            total += float(np.var(member, ddof=1)) / member.size
            df += member.size - 1
    return total / labels.size**2, float(df)


def _metric(values: np.ndarray, groups: Optional[np.ndarray]) -> float:
    """The metric of one run's per-query values: their mean, or the mean of per-group means."""
    return QueryValues(values, groups).statistic()


def _combine(value: float, terms: Sequence[Tuple[float, float]], seeds: int, confidence: float, method: str):
    """SeedEstimate from variance components [(variance, df)] (Welch-Satterthwaite)."""
    variance = sum(v for v, _ in terms)
    if variance <= 0.0:  # every seed and every query identical: no spread to put an interval on
        return SeedEstimate(value, (value, value), 0.0, None, seeds, 0.0 if value != 0.0 else 1.0, method)
    denominator = sum(v * v / d for v, d in terms if d > 0 and v > 0)
    df = variance * variance / denominator if denominator > 0 else float("inf")
    se = float(np.sqrt(variance))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df)) * se
    p_value = float(2.0 * stats.t.sf(abs(value) / se, df))
    return SeedEstimate(value, (value - half, value + half), se, float(df), seeds, p_value, method)


def seed_estimate(runs: Sequence[QueryValues], confidence: float = 0.95) -> SeedEstimate:
    """The row's value and interval from one run per seed on the same queries (module docstring). One run: its
    metric, no interval, no p-value. Raises ValueError when the runs are not on the same queries."""
    matrix, groups = _stacked(runs)
    per_seed = np.array([_metric(row, groups) for row in matrix])
    value = float(per_seed.mean())
    seeds = len(runs)
    if seeds < 2:
        return SeedEstimate(value, None, None, None, 1, None, METHOD)
    seed_term = (float(np.var(per_seed, ddof=1)) / seeds, float(seeds - 1))
    query_term = query_variance(matrix.mean(axis=0), groups)
    return _combine(value, [seed_term, query_term], seeds, confidence, METHOD)


def whole_set_estimate(values: Sequence[float], confidence: float = 0.95) -> SeedEstimate:
    """The row's value of a whole-set metric (FID, KID) from one value per seed: mean +- t(S - 1) x s / sqrt(S); one
    value: no interval."""
    per_seed = np.asarray(values, dtype=np.float64)
    if per_seed.size == 0:
        raise ValueError("a seed-level estimate needs at least one run")
    value = float(per_seed.mean())
    if per_seed.size < 2:
        return SeedEstimate(value, None, None, None, 1, None, WHOLE_SET_METHOD)
    term = (float(np.var(per_seed, ddof=1)) / per_seed.size, float(per_seed.size - 1))
    return _combine(value, [term], int(per_seed.size), confidence, WHOLE_SET_METHOD)


def seed_difference(
    a: Mapping[int, QueryValues], b: Mapping[int, QueryValues], confidence: float = 0.95
) -> Optional[SeedEstimate]:
    """Row A minus row B (runs by training seed, all on the same queries): paired by seed when both have the same
    seeds, else Welch (module docstring). None when either row has a single seed (no test at the seed level).
    ``method`` says which was used."""
    if len(a) < 2 or len(b) < 2:
        return None
    if set(a) == set(b):
        seeds = sorted(a)
        runs = [_difference(a[s], b[s]) for s in seeds]
        estimate = seed_estimate(runs, confidence)
        return SeedEstimate(**{**estimate.__dict__, "method": "paired by seed; " + METHOD})
    matrix_a, groups = _stacked(list(a.values()))
    matrix_b, groups_b = _stacked(list(b.values()))
    _stacked([QueryValues(matrix_a[0], groups), QueryValues(matrix_b[0], groups_b)])  # same queries, or ValueError
    per_a = np.array([_metric(row, groups) for row in matrix_a])
    per_b = np.array([_metric(row, groups) for row in matrix_b])
    terms: List[Tuple[float, float]] = [
        (float(np.var(per_a, ddof=1)) / per_a.size, float(per_a.size - 1)),
        (float(np.var(per_b, ddof=1)) / per_b.size, float(per_b.size - 1)),
        query_variance(matrix_a.mean(axis=0) - matrix_b.mean(axis=0), groups),
    ]
    value = float(per_a.mean() - per_b.mean())
    return _combine(value, terms, min(per_a.size, per_b.size), confidence, "Welch over seeds; " + METHOD)


def whole_set_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95):
    """Row A minus row B of a whole-set metric (one value per seed): a paired t test when both have the same seeds,
    else Welch; None when either has a single seed."""
    if len(a) < 2 or len(b) < 2:
        return None
    if set(a) == set(b):
        estimate = whole_set_estimate([a[s] - b[s] for s in sorted(a)], confidence)
        return SeedEstimate(**{**estimate.__dict__, "method": "paired by seed; " + WHOLE_SET_METHOD})
    va, vb = np.asarray(list(a.values()), dtype=float), np.asarray(list(b.values()), dtype=float)
    terms = [
        (float(np.var(va, ddof=1)) / va.size, float(va.size - 1)),
        (float(np.var(vb, ddof=1)) / vb.size, float(vb.size - 1)),
    ]
    return _combine(
        float(va.mean() - vb.mean()), terms, min(va.size, vb.size), confidence, "Welch; " + WHOLE_SET_METHOD
    )


def _difference(a: QueryValues, b: QueryValues) -> QueryValues:
    """Per-query a - b (the metric is linear in the values, so its difference is the difference's metric)."""
    _stacked([a, b])
    return QueryValues(a.values - b.values, a.groups)
