"""The published statistics against exact enumeration on tiny hand-made cases (an independent reference: plain Python
over every resample / every sign pattern, not the module's own code), the confidence level pinned, the table's star."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from evals.results.bootstrap import QueryValues, bootstrap_ci, bootstrap_distribution, paired_test, percentile_interval
from report.tables import SIGNIFICANCE, cell


def balanced_mean(values, groups):
    """Mean over the classes PRESENT of the per-class mean (sklearn's balanced accuracy), exact, by hand."""
    by_class = {}
    for v, g in zip(values, groups):
        by_class.setdefault(g, []).append(Fraction(v))
    return sum(sum(vs) / len(vs) for vs in by_class.values()) / len(by_class)


def exact_bootstrap(values, groups=None):
    """{statistic: probability} over all n^n equally likely index resamples."""
    n = len(values)
    groups = groups if groups is not None else [0] * n
    law = Counter()
    for idx in itertools.product(range(n), repeat=n):
        law[balanced_mean([values[i] for i in idx], [groups[i] for i in idx])] += 1
    return {float(k): c / n**n for k, c in law.items()}


def assert_matches_law(draws, law, what):
    """Every value drawn is a value of the exact law, and each value's frequency is within 5 binomial sd."""
    draws = np.asarray(draws)
    keys = np.array(sorted(law))
    nearest = keys[np.abs(draws[:, None] - keys[None, :]).argmin(axis=1)]
    assert np.allclose(draws, nearest, atol=1e-12), f"{what}: values outside the exact law"
    for key, prob in law.items():
        freq = float((nearest == key).mean())
        sd = math.sqrt(prob * (1 - prob) / draws.size)
        assert abs(freq - prob) <= 5 * sd + 1e-9, f"{what}: P({key:.4f}) = {freq:.4f}, exact {prob:.4f}"


def assert_quantile_of_law(x, law, q):
    """x is a q-quantile of the exact law: P(X < x) <= q <= P(X <= x), up to the resampling error."""
    below = sum(p for v, p in law.items() if v < x - 1e-12)
    at_or_below = sum(p for v, p in law.items() if v <= x + 1e-12)
    assert below - 0.01 <= q <= at_or_below + 0.01, (x, q, below, at_or_below)


def test_bootstrap_law_matches_enumeration_plain_mean():
    values = [1.0, 0.0, 1.0, 0.5]
    law = exact_bootstrap(values)
    assert_matches_law(bootstrap_distribution(QueryValues(values), 40000, seed=3), law, "plain mean")


def test_bootstrap_law_with_classes_missing_from_resamples():
    # class 2 has one query: about a third of the resamples lack it, and the class-balanced mean is then over the two
    # classes present (dividing by all three would put values such as 1/3 in the law that it cannot reach)
    values = [1.0, 0.0, 1.0, 1.0, 0.0]
    groups = [0, 0, 0, 1, 2]
    law = exact_bootstrap(values, groups)
    metric = QueryValues(values, groups=groups)
    assert metric.statistic() == pytest.approx(float(balanced_mean(values, groups)))
    draws = bootstrap_distribution(metric, 40000, seed=4)
    assert_matches_law(draws, law, "class-balanced mean")
    lo, hi = bootstrap_ci(metric, 40000, 0.95, seed=4)
    assert_quantile_of_law(lo, law, 0.025)
    assert_quantile_of_law(hi, law, 0.975)


def test_paired_bootstrap_interval_matches_enumeration_with_missing_classes():
    a, b = [1.0, 1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0, 1.0]
    groups = [0, 0, 1, 1, 2]
    n = len(a)
    law = Counter()
    for idx in itertools.product(range(n), repeat=n):
        g = [groups[i] for i in idx]
        law[float(balanced_mean([a[i] for i in idx], g) - balanced_mean([b[i] for i in idx], g))] += 1 / n**n
    result = paired_test(
        QueryValues(a, groups), QueryValues(b, groups), bootstrap_samples=40000, permutation_samples=10, seed=2
    )
    assert result.difference == pytest.approx(float(balanced_mean(a, groups) - balanced_mean(b, groups)))
    assert_quantile_of_law(result.interval[0], law, 0.025)
    assert_quantile_of_law(result.interval[1], law, 0.975)


def exact_sign_flip_p(x, d):
    """P(|sum_i s_i x_i| >= |d|) over all 2^n equally likely sign patterns."""
    hits = sum(
        abs(sum(s * v for s, v in zip(signs, x))) >= abs(d) - 1e-12
        for signs in itertools.product((-1, 1), repeat=len(x))
    )
    return hits / 2 ** len(x)


@pytest.mark.parametrize("grouped", [False, True])
def test_permutation_p_value_matches_enumeration(grouped):
    a = [1, 1, 0, 1, 1, 0, 1, 1, 1, 0]
    b = [0, 1, 1, 0, 0, 0, 1, 0, 1, 0]
    groups = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2] if grouped else None
    qa, qb = QueryValues(a, groups), QueryValues(b, groups)
    counts = Counter(groups) if grouped else {None: len(a)}
    weights = [1 / (len(counts) * counts[g]) for g in (groups or [None] * len(a))]
    x = [w * (ai - bi) for w, ai, bi in zip(weights, a, b)]
    d = qa.statistic() - qb.statistic()
    assert sum(x) == pytest.approx(d)
    exact = exact_sign_flip_p(x, d)
    samples = 200000
    result = paired_test(qa, qb, bootstrap_samples=0, permutation_samples=samples, seed=7)
    expected = (1 + samples * exact) / (1 + samples)
    assert abs(result.p_value - expected) <= 5 * math.sqrt(exact * (1 - exact) / samples)


def test_all_discordant_pairs_p_value_is_the_enumerated_one_and_never_zero():
    # 5 discordant pairs: |sum s_i| = 5 only when all signs agree, p = 2 / 32
    result = paired_test(
        QueryValues(np.ones(5)), QueryValues(np.zeros(5)), bootstrap_samples=0, permutation_samples=40000, seed=1
    )
    assert exact_sign_flip_p([1.0] * 5, 5.0) == 2 / 32
    assert abs(result.p_value - 2 / 32) <= 5 * math.sqrt((2 / 32) * (30 / 32) / 40000)
    # 40 discordant pairs: p = 2^-39, so no permutation reaches |d| and the p-value is (1 + 0) / (1 + N), never 0
    far = paired_test(
        QueryValues(np.ones(40)), QueryValues(np.zeros(40)), bootstrap_samples=0, permutation_samples=999, seed=1
    )
    assert far.p_value == 1 / 1000


def test_percentile_interval_pins_the_confidence_level():
    grid = np.arange(1001) / 1000.0  # the q-quantile (linear interpolation) of this grid is q itself
    assert percentile_interval(grid, 0.95) == pytest.approx((0.025, 0.975), abs=1e-12)
    assert percentile_interval(grid, 0.90) == pytest.approx((0.05, 0.95), abs=1e-12)
    assert percentile_interval(grid, 0.50) == pytest.approx((0.25, 0.75), abs=1e-12)


def test_interval_is_the_exact_binomial_quantiles():
    # the bootstrap law of a hit rate k/n is Binomial(n, k/n) / n exactly; its 2.5% and 97.5% points, from scipy
    n, k = 2500, 1000
    values = np.zeros(n)
    values[:k] = 1.0
    lo, hi = bootstrap_ci(QueryValues(values), samples=40000, confidence=0.95, seed=0)
    exact_lo, exact_hi = binom.ppf(0.025, n, k / n) / n, binom.ppf(0.975, n, k / n) / n
    # 2 lattice steps (2 / n = 0.08 sd): a 94% or 96% interval is already outside
    assert abs(lo - exact_lo) <= 2 / n and abs(hi - exact_hi) <= 2 / n
    lo90, hi90 = bootstrap_ci(QueryValues(values), samples=40000, confidence=0.90, seed=0)
    assert abs(lo90 - binom.ppf(0.05, n, k / n) / n) <= 2 / n and abs(hi90 - binom.ppf(0.95, n, k / n) / n) <= 2 / n


def row(delta, p_value, p=0.5, strategy="mix"):
    return pd.Series(
        {
            "value": 0.61,
            "ci_low": 0.59,
            "ci_high": 0.63,
            "delta_vs_p1": delta,
            "delta_p_value": p_value,
            "p": p,
            "strategy": strategy,
            "percent": True,
        }
    )


def test_star_marks_only_significant_deltas():
    assert SIGNIFICANCE == 0.05
    assert cell(row(0.031, 0.01)) == "61.0 [59.0, 63.0] (+3.1*)"
    assert cell(row(0.031, 0.30)) == "61.0 [59.0, 63.0] (+3.1)"  # a non-zero delta that is not significant
    assert cell(row(-0.012, 0.0501)) == "61.0 [59.0, 63.0] (-1.2)"
    assert cell(row(-0.012, 0.0499)) == "61.0 [59.0, 63.0] (-1.2*)"
    assert cell(row(0.031, float("nan"))) == "61.0 [59.0, 63.0] (+3.1)"  # FID: no paired test, no star
    assert cell(row(0.0, 1.0, p=1.0)) == "61.0 [59.0, 63.0]"  # the baseline itself
