"""How faithful must a recaptioner be? The faithfulness curve: ``results/faithfulness.md``.

For each captioner (``captioner_of``: the recaption stage's backend and model, with the ``faithfulness`` backend's set
rates; "data set's recaptions" where the run had no recaption stage) and each mixed p, the gain of the CLIP row over
the p = 1 row of the same data, model and budget (the baseline shared by every captioner: alt-text only reads no
recaption; where several p = 1 rows exist, the one with the most seeds) on each retrieval and zero-shot metric, at
the seed level (``report.rows.row_difference``: paired by seed where the seed sets match, else Welch), against the
captioner's measured attribute precision (``recaption.quality``, recorded by the recaption stage in
``run.recaption.train.quality``; the scenes builder's own descriptions are exact, precision 1 by construction:
``tests/test_recaption_quality.py``).

The break-even precision of a p and metric (``break_even``): the precision at which the weighted least-squares line
through the captioners' (precision, gain) points crosses zero (weights 1 / SE^2 of each gain); its 95% interval is
the percentile interval of that root over a parametric bootstrap of the gains (each drawn from a t with its own
degrees of freedom, scaled by its SE, independently: the captioners' rows share the p = 1 baseline, which makes the
gains positively correlated, so the interval is somewhat too narrow in the slope's direction and too wide in the
level's; said in the file). It needs at least three captioners with a known precision, a slope whose sign is the
same in 97.5% of the draws (else "not resolved"), and a root inside [0, 1] on the fitted line (else "outside").
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from report.rows import ROW_KEYS, missing, row_difference, row_groups, shown

RESOLVE = 0.975  # share of bootstrap slopes of one sign a break-even needs
DRAWS = 4000
ORACLE = "data set's recaptions"


def captioner_of(run: Dict[str, Any]) -> Tuple[str, Optional[float]]:
    """(label, measured attribute precision or None) of the captioner whose recaptions a run trained on."""
    resolved = run.get("resolved_config") or {}
    recaption = resolved.get("recaption")
    quality = ((run.get("recaption") or {}).get("train") or {}).get("quality") or {}
    precision = quality.get("attribute_precision")
    if not recaption:
        return ORACLE, (1.0 if run.get("data") == "scenes" else None)
    label = f"{recaption.get('backend')}:{recaption.get('model')}"
    if recaption.get("backend") == "faithfulness":
        rates = recaption.get("faithfulness") or {}
        label += (
            f" (attribute error {rates.get('attribute_error', 0):g}, invented {rates.get('invented', 0):g}, "
            f"omitted {rates.get('omitted', 0):g})"
        )
    return label, precision


def faithfulness_curve(
    long: pd.DataFrame, kinds: Sequence[str] = ("retrieval", "zeroshot_classification")
) -> pd.DataFrame:
    """One row per (data, model, budget, task, metric, captioner, p): the seed-level gain over the shared p = 1 row.
    ``long`` is the per-run table of ``report.tables.metric_rows`` with its ``captioner`` and ``recap_precision``."""
    long = long[long["kind"].isin(kinds) & (long["family"] == "clip")]
    if long.empty or "captioner" not in long:
        return pd.DataFrame()
    groups = row_groups(long)
    cache: Dict[str, Any] = {}
    baselines: Dict[tuple, Tuple[tuple, pd.DataFrame]] = {}
    key_index = {k: i for i, k in enumerate(ROW_KEYS)}

    def scope(key: tuple, runs: pd.DataFrame) -> tuple:
        """Rows comparable across captioners: the same training shards (by content: an experiment may rename its data
        set, as the CoCa one does), model, budget, task and metric."""
        fingerprint = runs["data_fingerprint"].iloc[0] if "data_fingerprint" in runs else key[key_index["data"]]
        return (fingerprint, *(key[key_index[k]] for k in ("model", "samples_seen", "table_task", "metric")))

    for key, runs in groups.items():
        named = dict(zip(ROW_KEYS, key))
        if named["strategy"] in ("mix", "original") and named["p"] == 1.0 and named["reduction"] == "full":
            best = baselines.get(scope(key, runs))
            if best is None or len(runs) > len(best[1]):
                baselines[scope(key, runs)] = (key, runs)
    rows = []
    for key, runs in groups.items():
        named = dict(zip(ROW_KEYS, key))
        if named["strategy"] != "mix" or named["reduction"] != "full" or missing(named["p"]) or named["p"] >= 1.0:
            continue
        base = baselines.get(scope(key, runs))
        if base is None:
            continue
        difference = row_difference(runs, base[1], cache)
        precision = runs["recap_precision"].dropna()
        rows.append(
            {
                **{k: named[k] for k in ("model", "samples_seen", "table_task", "metric", "p")},
                "data": dict(zip(ROW_KEYS, base[0]))["data"],  # the baseline's name for the shared shards
                "captioner": runs["captioner"].iloc[-1],
                "precision": float(precision.mean()) if len(precision) else None,
                "percent": bool(runs["percent"].iloc[0]),
                "seeds": len(runs),
                "baseline_seeds": len(base[1]),
                "gain": None if difference is None else difference.value,
                "low": None if difference is None else difference.interval[0],
                "high": None if difference is None else difference.interval[1],
                "se": None if difference is None else difference.standard_error,
                "df": None if difference is None else difference.df,
                "p_value": None if difference is None else difference.p_value,
            }
        )
    return pd.DataFrame(rows)


def break_even(points: pd.DataFrame, seed: int = 0, draws: int = DRAWS) -> Dict[str, Any]:
    """The precision where the gain crosses zero (module docstring) from rows with ``precision``, ``gain``, ``se``,
    ``df``: {"value", "low", "high", "slope", "verdict"} (value None unless resolved)."""
    usable = points.dropna(subset=["precision", "gain", "se", "df"])
    usable = usable[usable["se"] > 0]
    if len(usable) < 3 or usable["precision"].nunique() < 3:
        return {
            "value": None,
            "low": None,
            "high": None,
            "slope": None,
            "verdict": "not resolved (fewer than 3 captioners)",
        }
    x = usable["precision"].to_numpy(float)
    y = usable["gain"].to_numpy(float)
    se = usable["se"].to_numpy(float)
    df = usable["df"].to_numpy(float)

    def fit(values: np.ndarray) -> Tuple[float, float]:
        slope, intercept = np.polyfit(x, values, 1, w=1.0 / se)  # polyfit's weights multiply residuals: 1 / SE
        return float(slope), float(intercept)

    slope, intercept = fit(y)
    rng = np.random.default_rng(seed)
    samples = y[None, :] + rng.standard_t(df, size=(draws, len(y))) * se[None, :]
    fits = np.array([fit(s) for s in samples])
    same_sign = max(np.mean(fits[:, 0] > 0), np.mean(fits[:, 0] < 0))
    if slope == 0 or same_sign < RESOLVE:
        return {"value": None, "low": None, "high": None, "slope": slope, "verdict": "not resolved (no clear slope)"}
    root = -intercept / slope
    roots = -fits[:, 1] / fits[:, 0]
    low, high = np.percentile(roots[np.sign(fits[:, 0]) == np.sign(slope)], [2.5, 97.5])
    verdict = "resolved" if 0.0 <= root <= 1.0 else "outside [0, 1] on the fitted line"
    return {"value": float(root), "low": float(low), "high": float(high), "slope": slope, "verdict": verdict}


def faithfulness_markdown(table: pd.DataFrame) -> Optional[str]:
    """The page over the scopes (shards, model, budget, task, metric) with at least two captioners, or None when
    there is none or no gain in them has a seed-level estimate yet."""
    if table.empty:
        return None
    scope = ["data", "model", "samples_seen", "table_task", "metric"]
    table = table.groupby(scope).filter(lambda rows: rows["captioner"].nunique() >= 2)
    if table.empty or table["gain"].isna().all():
        return None
    lines = [
        "# How faithful must a recaptioner be?",
        "",
        "Gain of each captioner's CLIP row over the shared p = 1 row (alt-text only) of the same data, model and "
        "budget, at the seed level with its 95% interval (report/faithfulness.py; 'seeds' = the row's / the baseline's), "
        "against the captioner's measured attribute precision on its training recaptions (recaption/quality.py). "
        "Break-even: the precision where a weighted least-squares line through the captioners' gains crosses zero, "
        "with a parametric-bootstrap percentile interval that treats the gains as independent although they share the "
        "baseline.",
        "",
    ]
    for (data, model, budget, task, metric), rows in table.groupby(scope, sort=True):
        percent = bool(rows["percent"].iloc[0])
        lines += [f"## {data}, {model}, {int(budget):,} samples: {task} {metric}", ""]
        ordered = rows.sort_values(["p", "precision"])
        shown_rows = ordered.assign(
            precision=[("n/a" if missing(v) else f"{v:.3f}") for v in ordered["precision"]],
            gain=[
                "n/a (one seed)"
                if missing(g)
                else f"{shown(g, percent, sign=True)} [{shown(lo, percent, sign=True)}, {shown(hi, percent, sign=True)}]"
                for g, lo, hi in ordered[["gain", "low", "high"]].itertuples(index=False)
            ],
            seeds=[f"{a} / {b}" for a, b in ordered[["seeds", "baseline_seeds"]].itertuples(index=False)],
        )
        lines += [shown_rows[["p", "captioner", "precision", "seeds", "gain"]].to_markdown(index=False), ""]
        for p, at_p in rows.groupby("p"):
            found = break_even(at_p)
            if found["value"] is None:
                lines.append(f"- p = {p:g}: break-even {found['verdict']}.")
            else:
                lines.append(
                    f"- p = {p:g}: break-even precision {found['value']:.3f} [{found['low']:.3f}, {found['high']:.3f}] "
                    f"({found['verdict']}; slope {shown(found['slope'], percent, sign=True)} per unit precision)."
                )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
