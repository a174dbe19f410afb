"""Seed-level intervals and tests (evals.results.seeds): coverage under simulated runs with a known between-seed
variance, against the query-only interval the tables used before, and exact values on small hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from evals.results.bootstrap import QueryValues, bootstrap_ci
from evals.results.seeds import (
    query_variance,
    seed_difference,
    seed_estimate,
    whole_set_difference,
    whole_set_estimate,
)

SEEDS, QUERIES = 3, 400
SEED_SD, QUERY_SD, NOISE_SD = 0.03, 0.25, 0.25  # a seed effect as large as the LiT seeds showed (a few points)


def simulated_row(rng: np.random.Generator, mu: float = 0.5, seeds: int = SEEDS, b=None):
    """One row's runs: v_si = mu + a_s + b_i + e_si with fresh seed and interaction effects, and fresh query
    effects unless ``b`` (1 x QUERIES) is given (two rows scored on the same test set share them)."""
    a = rng.normal(0.0, SEED_SD, size=(seeds, 1))
    b = rng.normal(0.0, QUERY_SD, size=(1, QUERIES)) if b is None else b
    e = rng.normal(0.0, NOISE_SD, size=(seeds, QUERIES))
    return [QueryValues(row) for row in mu + a + b + e]


def simulated_hits(rng: np.random.Generator, mu: float = 0.4, seeds: int = SEEDS):
    """Binary hits: query i is hit by seed s with probability clip(q_i + a_s), q_i ~ Beta with mean mu."""
    q = rng.beta(2.0, 2.0 * (1 - mu) / mu, size=(1, QUERIES))
    a = rng.normal(0.0, SEED_SD, size=(seeds, 1))
    return [QueryValues(row) for row in (rng.random((seeds, QUERIES)) < np.clip(q + a, 0, 1)).astype(float)]


def coverage(intervals, truth: float) -> float:
    return float(np.mean([lo <= truth <= hi for lo, hi in intervals]))


def test_the_seed_level_interval_covers_the_expected_metric_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    intervals = [seed_estimate(simulated_row(rng)).interval for _ in range(3000)]
    # 3000 draws: the binomial standard error of a 95% coverage is 0.4 points
    assert 0.935 <= coverage(intervals, 0.5) <= 0.97


def test_the_seed_level_interval_covers_binary_hits_too():
    rng = np.random.default_rng(1)
    mu = 0.4  # E[clip(q + a)] = E[q] up to the clipped tails, which the Beta(2, 3) keeps at under 1e-3
    intervals = [seed_estimate(simulated_hits(rng, mu)).interval for _ in range(2000)]
    assert 0.93 <= coverage(intervals, mu) <= 0.975


def test_the_old_query_only_interval_undercovers_when_seeds_vary():
    rng = np.random.default_rng(2)
    query_only, seed_level = [], []
    for _ in range(400):
        runs = simulated_row(rng)
        query_only.append(bootstrap_ci(runs[0], samples=300, seed=0))  # what a one-seed table printed
        seed_level.append(seed_estimate(runs).interval)
    assert coverage(query_only, 0.5) < 0.80  # the seed effect (sd 0.03) is larger than the query error (about 0.018)
    assert coverage(seed_level, 0.5) > 0.9


def test_a_percentile_bootstrap_over_three_seeds_undercovers_which_is_why_the_t_interval_is_used():
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(1000):
        means = np.array([r.statistic() for r in simulated_row(rng)])
        draws = rng.choice(means, size=(500, means.size)).mean(axis=1)
        lo, hi = np.quantile(draws, [0.025, 0.975])
        hits += lo <= 0.5 <= hi
    assert hits / 1000 < 0.85  # the module docstring's reason (about 75-80% at S = 3)


def test_the_estimate_equals_the_hand_computed_components():
    runs = [QueryValues([1.0, 0.0, 1.0, 1.0]), QueryValues([1.0, 1.0, 0.0, 0.0]), QueryValues([0.0, 0.0, 1.0, 1.0])]
    m = np.array([0.75, 0.5, 0.5])
    vbar = np.array([2 / 3, 1 / 3, 2 / 3, 2 / 3])
    seed_term, query_term = m.var(ddof=1) / 3, vbar.var(ddof=1) / 4
    df = (seed_term + query_term) ** 2 / (seed_term**2 / 2 + query_term**2 / 3)
    half = stats.t.ppf(0.975, df) * np.sqrt(seed_term + query_term)
    got = seed_estimate(runs)
    assert got.value == pytest.approx(m.mean())
    assert got.df == pytest.approx(df)
    assert got.interval == pytest.approx((m.mean() - half, m.mean() + half))
    assert got.seeds == 3


def test_grouped_metrics_use_the_stratified_query_variance():
    values = np.array([1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    groups = np.array([0, 0, 0, 1, 1, 1])
    variance, df = query_variance(values, groups)
    expected = (np.var([1, 0, 1], ddof=1) / 3 + np.var([1, 1, 0], ddof=1) / 3) / 4
    assert variance == pytest.approx(expected)
    assert df == 4
    # a mean of per-class means: seed metrics are per-class balanced
    runs = [QueryValues(values, groups), QueryValues(np.array([1.0, 1, 1, 0, 0, 0]), groups)]
    assert seed_estimate(runs).value == pytest.approx(((2 / 3 + 2 / 3) / 2 + (1 + 0) / 2) / 2)


def test_one_seed_gets_no_interval_and_no_test():
    one = seed_estimate([QueryValues([1.0, 0.0, 1.0])])
    assert one.value == pytest.approx(2 / 3) and one.interval is None and one.p_value is None and one.seeds == 1
    assert seed_difference({0: QueryValues([1.0, 0.0])}, {0: QueryValues([0.0, 0.0])}) is None
    assert whole_set_estimate([12.0]).interval is None


def test_runs_on_different_queries_are_refused():
    with pytest.raises(ValueError, match="same queries"):
        seed_estimate([QueryValues([1.0, 0.0]), QueryValues([1.0, 0.0, 1.0])])
    with pytest.raises(ValueError, match="group labels"):
        seed_estimate([QueryValues([1.0, 0.0], [0, 1]), QueryValues([1.0, 0.0], [0, 0])])


def test_a_paired_difference_is_the_estimate_of_the_per_seed_differences():
    rng = np.random.default_rng(4)
    a = {s: QueryValues(rng.random(50)) for s in (0, 1, 2)}
    b = {s: QueryValues(rng.random(50)) for s in (0, 1, 2)}
    got = seed_difference(a, b)
    direct = seed_estimate([QueryValues(a[s].values - b[s].values) for s in (0, 1, 2)])
    assert got.value == pytest.approx(np.mean([a[s].statistic() - b[s].statistic() for s in (0, 1, 2)]))
    assert got.interval == pytest.approx(direct.interval) and got.p_value == pytest.approx(direct.p_value)
    assert got.method.startswith("paired by seed")


def test_a_difference_of_rows_with_different_seeds_is_welch():
    rng = np.random.default_rng(5)
    a = {s: QueryValues(rng.random(60) < 0.6) for s in (0, 1, 2)}
    b = {s: QueryValues(rng.random(60) < 0.4) for s in (3, 4)}
    got = seed_difference(a, b)
    ma = np.array([v.statistic() for v in a.values()])
    mb = np.array([v.statistic() for v in b.values()])
    dbar = np.mean([v.values for v in a.values()], axis=0) - np.mean([v.values for v in b.values()], axis=0)
    variance = ma.var(ddof=1) / 3 + mb.var(ddof=1) / 2 + dbar.var(ddof=1) / 60
    assert got.value == pytest.approx(ma.mean() - mb.mean())
    assert got.standard_error == pytest.approx(np.sqrt(variance))
    assert got.method.startswith("Welch")


def paired_rows(rng: np.random.Generator, shift: float):
    """Two rows (a p and the p = 1 baseline) scored on the same test queries, three seeds each."""
    b = rng.normal(0.0, QUERY_SD, size=(1, QUERIES))
    return dict(enumerate(simulated_row(rng, 0.5 + shift, b=b))), dict(enumerate(simulated_row(rng, 0.5, b=b)))


def test_the_difference_test_holds_its_size_and_finds_a_real_effect():
    rng = np.random.default_rng(6)
    null = [seed_difference(*paired_rows(rng, 0.0)) for _ in range(1500)]
    assert 0.03 <= np.mean([d.p_value < 0.05 for d in null]) <= 0.07
    # the difference's interval covers the true 0.1 about 95% of the time; with three seeds the test finds it at 0.2
    shifted = [seed_difference(*paired_rows(rng, 0.1)) for _ in range(1000)]
    assert 0.93 <= coverage([d.interval for d in shifted], 0.1) <= 0.97
    assert 0.4 < np.mean([d.p_value < 0.05 for d in shifted]) < 0.8  # three seeds: a 0.1 effect is often missed
    large = [seed_difference(*paired_rows(rng, 0.2)) for _ in range(300)]
    assert np.mean([d.p_value < 0.05 for d in large]) > 0.9


def test_whole_set_values_get_a_t_interval_over_seeds():
    got = whole_set_estimate([10.0, 12.0, 14.0])
    half = stats.t.ppf(0.975, 2) * 2.0 / np.sqrt(3)
    assert got.value == 12.0 and got.interval == pytest.approx((12 - half, 12 + half)) and got.df == 2
    paired = whole_set_difference({0: 10.0, 1: 12.0, 2: 15.0}, {0: 9.0, 1: 10.0, 2: 12.0})
    assert paired.value == pytest.approx(2.0)
    assert paired.p_value == pytest.approx(stats.ttest_rel([10, 12, 15], [9, 10, 12]).pvalue)
    welch = whole_set_difference({0: 10.0, 1: 12.0, 2: 15.0}, {5: 9.0, 6: 10.0})
    assert welch.p_value == pytest.approx(stats.ttest_ind([10, 12, 15], [9, 10], equal_var=False).pvalue)
