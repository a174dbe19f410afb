"""The rows of the comparison tables: one per recipe over its training seeds (``seed_rows``), the seed-level
difference of two rows (``row_difference``), and how values are shown.

A row is ``ROW_KEYS``: data set, model family, model, caption strategy, caption reduction (``run.reduction_label``:
``full``, ``recap sub_caption K=1``, ``n=2 positives`` ...; ``full`` for records without one), p, training budget,
global batch, recipe (the train key without ``train.seed``: ``report.tables.recipe_of``), task version and metric. Its value is the mean over
its seeds; intervals and tests are ``evals.results.seeds``' (between-seed and query-level variance). The input is
the per-run long table of ``report.tables.metric_rows`` after ``separate_data_versions``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import pandas as pd

from evals.results.bootstrap import QueryValues
from evals.results.records import read_per_query
from evals.results.seeds import SeedEstimate, seed_difference, seed_estimate, whole_set_difference, whole_set_estimate

ROW_KEYS = [
    "data",
    "family",
    "model",
    "strategy",
    "reduction",
    "p",
    "samples_seen",
    "global_batch",
    "recipe",
    "table_task",
    "metric",
]


def missing(value: Any) -> bool:
    """None or NaN."""
    return value is None or pd.isna(value)


def percent(value: Optional[float]) -> str:
    """A fraction as a percentage with one decimal, or n/a."""
    return "n/a" if missing(value) else f"{100 * value:.1f}"


def shown(value: Optional[float], as_percent: bool, sign: bool = False) -> str:
    """A metric as the tables show it: a fraction in % with one decimal, any other value (FID, KID, a CLIP score)
    with four significant digits; ``sign`` prefixes + or -; n/a when missing."""
    if missing(value):
        return "n/a"
    if as_percent:
        return f"{100 * value:+.1f}" if sign else f"{100 * value:.1f}"
    return f"{value:+.4g}" if sign else f"{value:.4g}"


def _group_key(row: pd.Series, keys: Sequence[str]) -> tuple:
    """A hashable key of ``keys`` with missing values (concat's p) as None."""
    return tuple(None if missing(row[k]) else row[k] for k in keys)


def with_reduction(long: pd.DataFrame) -> pd.DataFrame:
    """``long`` with a ``reduction`` column, ``full`` where it is missing (records from before reductions existed)."""
    if "reduction" not in long:
        return long.assign(reduction="full")
    return long.assign(reduction=long["reduction"].astype(object).where(long["reduction"].notna(), "full"))


def is_baseline_row(named: Dict[str, Any]) -> bool:
    """A row (``ROW_KEYS`` by name) of the p = 1 baseline: alt-text only, whole captions, one text per image."""
    return named["strategy"] in ("mix", "original") and named["p"] == 1.0 and named.get("reduction", "full") == "full"


def row_groups(long: pd.DataFrame) -> Dict[tuple, pd.DataFrame]:
    """The runs of each table row: ``ROW_KEYS`` tuple (missing values as None) -> its runs sorted by seed, a seed
    published twice for one recipe keeping its newest record."""
    long = with_reduction(long).sort_values("created").drop_duplicates(ROW_KEYS + ["seed"], keep="last")
    groups: Dict[tuple, pd.DataFrame] = {}
    for key, runs in long.groupby(
        [long[k].astype(object).where(long[k].notna(), None) for k in ROW_KEYS], dropna=False
    ):
        groups[tuple(None if missing(v) else v for v in key)] = runs.sort_values("seed")
    return groups


def per_query_of(runs: pd.DataFrame, cache: Dict[str, Dict[str, QueryValues]]) -> Optional[Dict[int, QueryValues]]:
    """Seed -> per-query values of one row's runs (read once per record into ``cache``), or None for a whole-set
    metric (FID, KID) or a run without per-query values."""
    if not runs["per_query"].all():
        return None
    out = {}
    for seed, metric, path in zip(runs["seed"], runs["metric"], runs["path"]):
        if path not in cache:
            cache[path] = read_per_query(path)
        out[int(seed)] = cache[path][metric]
    return out


def seed_level(
    runs: pd.DataFrame, cache: Dict[str, Dict[str, QueryValues]], confidence: float = 0.95
) -> Tuple[SeedEstimate, Optional[Dict[int, QueryValues]]]:
    """(the row's seed-level estimate, its per-query values by seed or None for a whole-set metric)."""
    per_query = per_query_of(runs, cache)
    if per_query is not None:
        return seed_estimate(list(per_query.values()), confidence), per_query
    return whole_set_estimate(runs["value"].astype(float).tolist(), confidence), None


def row_difference(
    runs_a: pd.DataFrame, runs_b: pd.DataFrame, cache: Dict[str, Dict[str, QueryValues]], confidence: float = 0.95
) -> Optional[SeedEstimate]:
    """Row A minus row B at the seed level (``evals.results.seeds``: paired by seed when the seed sets are equal,
    else Welch); None when either row has one seed."""
    a, b = per_query_of(runs_a, cache), per_query_of(runs_b, cache)
    if a is not None and b is not None:
        return seed_difference(a, b, confidence)
    return whole_set_difference(
        dict(zip(runs_a["seed"].astype(int), runs_a["value"].astype(float))),
        dict(zip(runs_b["seed"].astype(int), runs_b["value"].astype(float))),
        confidence,
    )


def seed_rows(long: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """The table's rows: one per ``ROW_KEYS`` (a recipe on one task version and metric) over its training seeds, from
    the per-run ``long`` table (after ``separate_data_versions``).

    Columns: the row keys, ``seeds`` ("0, 1, 2"), ``n_seeds``, ``realised_p`` (mean over seeds), ``value`` (mean over
    seeds), ``ci_low``/``ci_high`` (seed-level with several seeds, the record's query-only interval with one),
    ``interval`` (which), ``delta_vs_p1``, ``delta_p_value`` (None without a seed-level test), ``delta_method``,
    ``commands`` and the per-run columns the markdown needs. A seed published twice for one recipe keeps its newest
    record. The baseline of a row is the p = 1 row of the same data, model, budget, task version and metric, preferring
    the one with the same seeds, then the one sharing most seeds (whole captions: ``is_baseline_row``)."""
    if long.empty:
        return long
    groups = row_groups(long)
    cache: Dict[str, Dict[str, QueryValues]] = {}
    estimates = {key: seed_level(runs, cache, confidence) for key, runs in groups.items()}
    rows = []
    for key, runs in groups.items():
        estimate = estimates[key][0]
        first = runs.iloc[-1]
        base_key = _baseline_key(key, runs, groups)
        delta, p_value, method = None, None, None
        if base_key == key:
            delta = 0.0
        elif base_key is not None:
            base_runs = groups[base_key]
            base_estimate = estimates[base_key][0]
            test = row_difference(runs, base_runs, cache, confidence)
            if test is not None:
                delta, p_value, method = test.value, test.p_value, test.method
            else:
                delta, method = plain_difference(runs, base_runs, estimate, base_estimate)
        if estimate.interval is not None:
            low, high, interval = estimate.interval[0], estimate.interval[1], estimate.method
            if bool(first["percent"]):  # a fraction: a t interval near 0 or 1 is cut at the metric's range
                low, high = max(low, 0.0), min(high, 1.0)
        else:
            low, high, interval = first["ci_low"], first["ci_high"], "query-only interval of the one seed's record"
        realised = runs["realised_p"].dropna().astype(float) if "realised_p" in runs else pd.Series(dtype=float)
        rows.append(
            {
                **dict(zip(ROW_KEYS, key)),
                "task": first["task"],
                "dataset": first["dataset"],
                "percent": first["percent"],
                "lower_is_better": first["lower_is_better"],
                "n": first["n"],
                "seeds": ", ".join(str(int(s)) for s in runs["seed"]),
                "n_seeds": len(runs),
                "realised_p": float(realised.mean()) if len(realised) else None,
                "value": estimate.value,
                "ci_low": low,
                "ci_high": high,
                "interval": interval,
                "delta_vs_p1": delta,
                "delta_p_value": p_value,
                "delta_method": method,
                "command": first["command"],
                "commit": first["commit"],
                "measured_by": first.get("measured_by"),
                "chance": first.get("chance"),
            }
        )
    return pd.DataFrame(rows)


def plain_difference(
    runs: pd.DataFrame, base_runs: pd.DataFrame, estimate: SeedEstimate, base_estimate: SeedEstimate
) -> Tuple[float, str]:
    """(delta, method) where a seed-level test is impossible (either row has one seed): a one-seed row against the
    baseline's run of the same seed when it has one (the runs share initialisation and data order), else against
    the baseline's mean."""
    if len(runs) == 1 and int(runs["seed"].iloc[0]) in set(base_runs["seed"].astype(int)):
        seed = int(runs["seed"].iloc[0])
        reference = float(base_runs.loc[base_runs["seed"].astype(int) == seed, "value"].iloc[0])
        return estimate.value - reference, f"plain difference against the p = 1 run of seed {seed} (one seed: no test)"
    return estimate.value - base_estimate.value, "plain difference against the p = 1 row's mean (one seed: no test)"


def _baseline_key(key: tuple, runs: pd.DataFrame, groups: Dict[tuple, pd.DataFrame]) -> Optional[tuple]:
    """The key of the p = 1 row ``key`` is compared with (``seed_rows``), or None when there is none."""
    named = dict(zip(ROW_KEYS, key))
    same = ("data", "family", "model", "samples_seen", "table_task", "metric")
    seeds = set(runs["seed"].astype(int))
    candidates = []
    for other, other_runs in groups.items():
        o = dict(zip(ROW_KEYS, other))
        if is_baseline_row(o) and all(o[k] == named[k] for k in same):
            other_seeds = set(other_runs["seed"].astype(int))
            candidates.append((other_seeds == seeds, len(other_seeds & seeds), len(other_seeds), other == key, other))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[:4])[4]
