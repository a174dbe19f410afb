"""Known answers for bootstrap intervals and the paired checkpoint test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.metrics import balanced_accuracy_score

import evals.results.bootstrap as bootstrap
from evals.results.bootstrap import (
    QueryValues,
    bootstrap_ci,
    bootstrap_distribution,
    paired_test,
    permutation_distribution,
)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_constant_hit_vector_gives_zero_width_interval(value):
    assert bootstrap_ci(QueryValues(np.full(50, value)), samples=500) == (value, value)


def test_two_query_case_by_hand():
    # resampled mean of [0, 1] is 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% / 97.5% quantiles are 0 and 1
    dist = bootstrap_distribution(QueryValues([0.0, 1.0]), samples=20000, seed=1)
    assert set(np.unique(dist)) == {0.0, 0.5, 1.0}
    assert abs((dist == 0.5).mean() - 0.5) < 0.02 and abs((dist == 0.0).mean() - 0.25) < 0.02
    assert bootstrap_ci(QueryValues([0.0, 1.0]), samples=20000, seed=1) == (0.0, 1.0)


def test_interval_endpoints_are_the_binomial_quantiles():
    # the bootstrap law of a hit rate 200/400 is Binomial(400, 1/2) / 400: its 2.5% / 97.5% points are 0.451 and 0.549
    values = np.zeros(400)
    values[:200] = 1.0
    lo, hi = bootstrap_ci(QueryValues(values), samples=40000, seed=0)
    assert (
        abs(lo - binom.ppf(0.025, 400, 0.5) / 400) <= 1.5 / 400
        and abs(hi - binom.ppf(0.975, 400, 0.5) / 400) <= 1.5 / 400
    )


def test_the_seed_alone_fixes_the_resamples():
    metric = QueryValues(np.random.default_rng(0).random(100) < 0.3)
    first = bootstrap_distribution(metric, 300, seed=5)
    np.random.seed(123)  # numpy's global state plays no part
    np.random.random(10)
    assert np.array_equal(bootstrap_distribution(metric, 300, seed=5), first)
    assert not np.array_equal(bootstrap_distribution(metric, 300, seed=6), first)


def test_grouped_statistic_is_sklearn_balanced_accuracy():
    rng = np.random.default_rng(2)
    target = rng.integers(0, 7, 500)
    pred = np.where(rng.random(500) < 0.4, target, rng.integers(0, 7, 500))
    metric = QueryValues(pred == target, groups=target)
    assert metric.statistic() == pytest.approx(balanced_accuracy_score(target, pred), abs=1e-12)


@pytest.mark.parametrize("groups", [False, True])
def test_count_resampling_matches_index_resampling(groups, monkeypatch):
    rng = np.random.default_rng(3)
    metric = QueryValues(rng.random(3000) < 0.3, rng.integers(0, 5, 3000) if groups else None)
    by_counts = bootstrap_distribution(metric, 3000, seed=0)
    monkeypatch.setattr(bootstrap, "MAX_LEVELS", 0)  # force index resampling
    by_index = bootstrap_distribution(metric, 3000, seed=0)
    assert abs(by_counts.mean() - by_index.mean()) < 1e-3
    assert abs(by_counts.std() - by_index.std()) < 1e-3


def test_continuous_values_use_index_resampling():
    values = np.random.default_rng(4).random(5000)  # 5000 distinct levels > MAX_LEVELS
    lo, hi = bootstrap_ci(QueryValues(values), samples=4000)
    se = values.std() / np.sqrt(values.size)  # the mean of 5000 draws is normal to a good approximation
    assert abs(lo - (values.mean() - 1.96 * se)) < 0.15 * se and abs(hi - (values.mean() + 1.96 * se)) < 0.15 * se


def test_paired_identical_checkpoints():
    metric = QueryValues(np.random.default_rng(5).random(200) < 0.5)
    result = paired_test(metric, metric, bootstrap_samples=500, permutation_samples=999)
    assert (result.difference, result.interval, result.p_value) == (0.0, (0.0, 0.0), 1.0)


def test_paired_all_discordant_by_hand():
    # a = 1, b = 0 on 5 queries: d = 1; a sign-flip statistic reaches |d| only when all 5 signs agree: p = 2 / 32
    a, b = QueryValues(np.ones(5)), QueryValues(np.zeros(5))
    result = paired_test(a, b, bootstrap_samples=1000, permutation_samples=40000, seed=0)
    assert result.difference == 1.0 and result.interval == (1.0, 1.0)
    assert abs(result.p_value - 2 / 32) < 0.005


def test_paired_clear_difference_has_small_p():
    rng = np.random.default_rng(6)
    a = rng.random(2000) < 0.6
    b = np.where(rng.random(2000) < 0.8, a, ~a) & (rng.random(2000) < 0.8)
    result = paired_test(QueryValues(a), QueryValues(b), 1000, 9999)
    assert result.difference > 0 and result.interval[0] > 0 and result.p_value < 0.001


def test_paired_requires_same_queries_and_groups():
    with pytest.raises(ValueError, match="same queries"):
        paired_test(QueryValues(np.ones(3)), QueryValues(np.ones(4)))
    with pytest.raises(ValueError, match="group labels"):
        paired_test(QueryValues(np.ones(3), [0, 1, 1]), QueryValues(np.ones(3), [0, 0, 1]))


def test_permutation_by_levels_matches_sign_matrix(monkeypatch):
    x = np.array([0.5, -0.5, 0.25, 0.0, 0.25, -0.25, 0.5])
    fast = permutation_distribution(x, 20000, np.random.default_rng(0))
    monkeypatch.setattr(bootstrap, "MAX_LEVELS", 0)
    slow = permutation_distribution(x, 20000, np.random.default_rng(0))
    for value in (0.0, 0.5, 1.0, 2.0):
        assert abs((np.abs(fast) >= value - 1e-12).mean() - (np.abs(slow) >= value - 1e-12).mean()) < 0.02
