"""Edges of evals.results.bootstrap with values known by hand: one query, no resamples, singleton classes, the number
of resamples returned over several chunks, the defaults shared with ``Resampling`` and the one-line refusals."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from evals.results.bootstrap import (
    QueryValues,
    Resampling,
    bootstrap_ci,
    bootstrap_distribution,
    paired_test,
    percentile_interval,
    permutation_distribution,
)


def test_defaults_are_the_resampling_defaults():
    settings = Resampling()
    assert (settings.bootstrap_samples, settings.permutation_samples, settings.confidence, settings.seed) == (
        1000,
        10000,
        0.95,
        0,
    )
    paired = inspect.signature(paired_test).parameters
    assert [paired[k].default for k in ("bootstrap_samples", "permutation_samples", "confidence", "seed")] == [
        1000,
        10000,
        0.95,
        0,
    ]
    ci = inspect.signature(bootstrap_ci).parameters
    assert [ci[k].default for k in ("samples", "confidence", "seed")] == [1000, 0.95, 0]
    assert inspect.signature(bootstrap_distribution).parameters["seed"].default == 0
    assert inspect.signature(percentile_interval).parameters["confidence"].default == 0.95


def test_no_queries_or_no_resamples_give_no_interval_and_one_query_a_point():
    assert bootstrap_ci(QueryValues([]), 100) is None
    assert bootstrap_ci(QueryValues([1.0, 0.0]), 0) is None and bootstrap_ci(QueryValues([1.0, 0.0]), -3) is None
    assert bootstrap_ci(QueryValues([0.25]), 50) == (0.25, 0.25)  # every resample of one query is that query
    one = bootstrap_ci(
        QueryValues([1.0, 0.0, 1.0]), 1, seed=2
    )  # one resample: both ends are its mean, a multiple of 1/3
    assert one[0] == one[1] and round(3 * one[0]) == pytest.approx(3 * one[0])
    assert bootstrap_distribution(QueryValues([1.0, 0.0]), 0).shape == (0,)


def test_the_seed_reaches_the_interval():
    metric = QueryValues(np.random.default_rng(0).random(30))  # continuous: two seeds cannot share their quantiles
    assert bootstrap_ci(metric, 50, seed=5) != bootstrap_ci(metric, 50, seed=0)
    assert bootstrap_ci(metric, 50, seed=5) == percentile_interval(bootstrap_distribution(metric, 50, seed=5))


@pytest.mark.parametrize("levels, samples", [(4000, 2500), (5000, 3)])
def test_every_requested_resample_is_returned_across_chunks(levels, samples):
    # 4000 levels: count resampling in chunks of 2^22 // 4000 = 1048 rows; 5000 levels: index resampling
    values = np.arange(levels) / levels
    draws = bootstrap_distribution(QueryValues(values), samples, seed=1)
    assert draws.shape == (samples,) and abs(draws.mean() - values.mean()) < 0.05


def test_every_requested_sign_flip_is_returned_across_chunks():
    x = (np.arange(5000) + 1) / 5000.0  # 5000 distinct magnitudes: signs drawn per query, in chunks of 838 rows
    draws = permutation_distribution(x, 2000, np.random.default_rng(0))
    assert draws.shape == (2000,)
    assert abs(draws.std() - math.sqrt((x**2).sum())) < 0.1 * math.sqrt((x**2).sum())  # sd of sum s_i x_i


def test_one_query_pair():
    # one discordant query: d = 1, both sign patterns give |d| = 1, so p = 1; every resample is that query
    result = paired_test(QueryValues([1.0]), QueryValues([0.0]), bootstrap_samples=20, permutation_samples=99)
    assert (result.difference, result.interval, result.p_value, result.n) == (1.0, (1.0, 1.0), 1.0, 1)


def test_singleton_classes_weight_each_query_by_one_over_the_classes():
    # 3 classes of one query each: d = 2/3; |s1/3 + s2/3| >= 2/3 for 2 of the 4 sign patterns: p = 1/2
    result = paired_test(
        QueryValues([1, 1, 0], [0, 1, 2]),
        QueryValues([0, 0, 0], [0, 1, 2]),
        bootstrap_samples=0,
        permutation_samples=20000,
        seed=3,
    )
    assert result.difference == pytest.approx(2 / 3)
    assert abs(result.p_value - 0.5) < 5 * math.sqrt(0.25 / 20000)


def test_paired_interval_settings_reach_the_result():
    rng = np.random.default_rng(1)
    a, b = QueryValues(rng.random(200) < 0.6), QueryValues(rng.random(200) < 0.5)
    assert paired_test(a, b, bootstrap_samples=0).interval is None
    assert paired_test(a, b, bootstrap_samples=1, permutation_samples=10).interval is not None
    wide = paired_test(a, b, bootstrap_samples=2000, permutation_samples=10, confidence=0.95, seed=4).interval
    narrow = paired_test(a, b, bootstrap_samples=2000, permutation_samples=10, confidence=0.5, seed=4).interval
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    first = paired_test(a, b, bootstrap_samples=50, permutation_samples=50, seed=9)
    assert paired_test(a, b, bootstrap_samples=50, permutation_samples=50, seed=9).to_dict() == first.to_dict()
    assert paired_test(a, b, bootstrap_samples=50, permutation_samples=50, seed=10).interval != first.interval


def test_paired_refusals_are_one_line():
    with pytest.raises(ValueError) as caught:
        paired_test(QueryValues([]), QueryValues([]))
    assert str(caught.value) == "paired test needs at least one query"
    with pytest.raises(ValueError) as caught:
        paired_test(QueryValues([1, 0], [0, 1]), QueryValues([1, 0], [1, 1]))
    assert str(caught.value) == "paired test needs the same group labels for both checkpoints"
    with pytest.raises(ValueError) as caught:
        paired_test(QueryValues([1, 0]), QueryValues([1]))
    assert str(caught.value) == "paired test needs the same queries: 2 vs 1"


def test_the_defaults_are_the_ones_documented():
    # calls without the settings give what the explicit Resampling() defaults give (same seed 0, same sample counts)
    rng = np.random.default_rng(2)
    a, b = QueryValues(rng.random(60)), QueryValues(rng.random(60))
    s = Resampling()
    assert (
        paired_test(a, b).to_dict()
        == paired_test(a, b, s.bootstrap_samples, s.permutation_samples, s.confidence, s.seed).to_dict()
    )
    assert bootstrap_ci(a) == bootstrap_ci(a, s.bootstrap_samples, s.confidence, s.seed)
    assert bootstrap_distribution(a, 40).tolist() == bootstrap_distribution(a, 40, seed=0).tolist()
    assert bootstrap_distribution(a, 40, seed=1).tolist() != bootstrap_distribution(a, 40).tolist()


def test_paired_result_json_form():
    result = paired_test(QueryValues([1.0]), QueryValues([0.0]), bootstrap_samples=5, permutation_samples=9)
    assert result.to_dict() == {
        "difference": 1.0,
        "interval": [1.0, 1.0],
        "p_value": 1.0,
        "n": 1,
        "method": "paired bootstrap percentile interval; two-sided sign-flip permutation p-value",
    }
    none = paired_test(QueryValues([1.0]), QueryValues([0.0]), bootstrap_samples=0, permutation_samples=9).to_dict()
    assert none["interval"] is None


def test_values_and_groups_of_any_shape_are_flattened_and_checked():
    metric = QueryValues([[1.0, 0.0], [1.0, 1.0]], groups=[["a", "b"], ["b", "b"]])
    assert metric.values.shape == (4,) and metric.groups.tolist() == [0, 1, 1, 1] and metric.n == 4
    assert metric.statistic() == pytest.approx((1.0 + 2 / 3) / 2)
    with pytest.raises(ValueError) as caught:
        QueryValues([1.0, 0.0], groups=[0])
    assert str(caught.value) == "groups has 1 entries for 2 values"


def test_weighted_stat_rows_missing_the_last_class():
    from evals.results.bootstrap import weighted_stat

    values, groups = np.array([1.0, 0.0, 1.0]), np.array([0, 1, 2])
    weights = np.array([[1.0, 1.0, 1.0], [2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])  # rows 2 and 3 lack class 2 (class 0 too)
    assert weighted_stat(values, groups, weights).tolist() == pytest.approx([2 / 3, 1 / 2, 0.0])


def test_index_resampling_draws_every_query():
    # 5000 distinct values (index resampling) with one outlier at index 0: a resample holds it with P = 1 - (1 - 1/n)^n
    values = np.arange(5000) / 5000.0
    values[0] = 1e6
    draws = bootstrap_distribution(QueryValues(values), 2000, seed=0)  # 3 chunks of 838 resamples
    assert draws.shape == (2000,)
    share = float((draws > 100).mean())
    assert abs(share - (1 - (1 - 1 / 5000) ** 5000)) < 5 * math.sqrt(0.25 / 2000)
