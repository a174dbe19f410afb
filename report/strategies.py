"""The caption strategies beside p: ``results/strategies.md`` and its plot, and CLIPS's inverse effect in ``paper.md``.

Rows are the tables' rows (``report.rows.row_groups``) of CLIP runs on retrieval and zero-shot tasks; each reduced row
(``run.reduction``: ``sub_caption``, ``token_span``, ``truncate`` of the recaption or of the original, K tokens or
sentences, ``n`` positives; ``captiondata.config.MixConfig``) is compared with the whole-caption row (``full``) of the
same data, model, budget, strategy, p and task, at the seed level (``report.rows.row_difference``).

The inverse effect (CLIPS: Liu et al. 2024, "CLIPS: An Enhanced CLIP Framework for Learning with Synthetic
Captions", arXiv 2411.16828): feeding the text encoder a short part of each synthetic caption beats the full
caption on retrieval, and not for alt-text. ``inverse_effect`` gives, for every reduced-recaption row at p < 1
against full at the same p, the difference and a verdict by ``report.verdicts.verdict`` (the paper's direction:
reduced > full); reductions of the original are reported as the control (CLIPS: no such gain).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import pandas as pd

from report.rows import ROW_KEYS, missing, row_difference, row_groups, seed_level, shown
from report.verdicts import verdict

KINDS = ("retrieval", "zeroshot_classification")
RETRIEVAL_METRICS = ("i2t_R@1", "t2i_R@1")


def reduction_parts(spec: Any) -> Dict[str, Any]:
    """{"source", "reduce", "k", "positives"} of a run's ``reduction`` dict (or its JSON text): the reduced caption
    source (``recap`` or ``original``; None for whole captions), its reduction, K, and the positives per image."""
    if isinstance(spec, str):
        spec = json.loads(spec) if spec else {}
    spec = spec or {}
    out: Dict[str, Any] = {"source": None, "reduce": "full", "k": None, "positives": int(spec.get("positives", 1))}
    for source in ("recap", "original"):
        reduce = spec.get(f"{source}_reduce")
        if reduce and reduce != "full":
            out.update(
                source=source,
                reduce=reduce,
                k=spec.get(f"{source}_sentences" if reduce == "sub_caption" else f"{source}_tokens"),
            )
            break
    return out


def strategy_rows(long: pd.DataFrame) -> pd.DataFrame:
    """Every row of a scope that has reduced rows, with its seed-level value and its difference from full."""
    long = long[long["kind"].isin(KINDS) & (long["family"] == "clip")]
    if long.empty or "reduction_spec" not in long:
        return pd.DataFrame()
    groups = row_groups(long)
    cache: Dict[str, Any] = {}
    index = {k: i for i, k in enumerate(ROW_KEYS)}
    scope_keys = ("data", "model", "samples_seen", "strategy", "p", "table_task", "metric")

    def scope(key: tuple) -> tuple:
        return tuple(key[index[k]] for k in scope_keys)

    full: Dict[tuple, pd.DataFrame] = {}
    for key, runs in groups.items():
        if key[index["reduction"]] == "full":
            best = full.get(scope(key))
            if best is None or len(runs) > len(best):
                full[scope(key)] = runs
    reduced_scopes = {scope(key) for key in groups if key[index["reduction"]] != "full"}
    rows = []
    for key, runs in groups.items():
        if scope(key) not in reduced_scopes:
            continue
        named = dict(zip(ROW_KEYS, key))
        estimate = seed_level(runs, cache)[0]
        base = full.get(scope(key))
        is_full = named["reduction"] == "full"
        difference = None if is_full or base is None else row_difference(runs, base, cache)
        rows.append(
            {
                **{k: named[k] for k in scope_keys},
                "reduction": named["reduction"],
                **reduction_parts(runs["reduction_spec"].iloc[-1]),
                "percent": bool(runs["percent"].iloc[0]),
                "seeds": len(runs),
                "full_seeds": None if base is None else len(base),
                "value": estimate.value,
                "low": None if estimate.interval is None else estimate.interval[0],
                "high": None if estimate.interval is None else estimate.interval[1],
                "difference": None if difference is None else difference,
            }
        )
    return pd.DataFrame(rows)


def _interval(value: Optional[float], low: Optional[float], high: Optional[float], percent: bool, sign=False) -> str:
    if missing(value):
        return "n/a"
    if missing(low):
        return f"{shown(value, percent, sign)} (one seed)"
    return f"{shown(value, percent, sign)} [{shown(low, percent, sign)}, {shown(high, percent, sign)}]"


def inverse_effect(table: pd.DataFrame) -> List[Dict[str, Any]]:
    """CLIPS's inverse effect on retrieval R@1: every reduced row at p < 1 against full at the same p."""
    out = []
    if table.empty:
        return out
    for _, row in table[(table["reduction"] != "full") & table["metric"].isin(RETRIEVAL_METRICS)].iterrows():
        if row["positives"] != 1 or row["source"] is None or missing(row["p"]) or row["p"] >= 1.0:
            continue
        difference = row["difference"]
        seeds = min(row["seeds"], row["full_seeds"] or 0)
        sign = 1 if row["source"] == "recap" else None
        out.append(
            {
                "data": row["data"],
                "model": row["model"],
                "task": row["table_task"],
                "metric": row["metric"],
                "p": row["p"],
                "comparison": f"{row['reduction']} vs full",
                "seeds": f"{row['seeds']} / {row['full_seeds']}",
                "difference": "n/a (one seed)"
                if difference is None
                else _interval(difference.value, *difference.interval, row["percent"], sign=True),
                "verdict": verdict(difference, seeds, sign)
                if sign
                else "control (CLIPS: no inverse effect for alt-text)",
            }
        )
    return out


def strategies_markdown(table: pd.DataFrame) -> Optional[str]:
    """The page, or None when no run reduces its captions."""
    if table.empty:
        return None
    lines = [
        "# Caption strategies beside p",
        "",
        "Each row: the seed-level mean with its 95% interval over training seeds and test queries, and its "
        "difference from the whole-caption (full) row of the same data, model, budget, strategy and p "
        "(report/strategies.py). K counts whitespace words (token_span, truncate) or sentences (sub_caption).",
        "",
    ]
    keys = ["data", "model", "samples_seen", "table_task", "metric"]
    for (data, model, budget, task, metric), rows in table.groupby(keys, sort=True):
        percent = bool(rows["percent"].iloc[0])
        rows = rows.sort_values(["p", "source", "reduce", "k"], na_position="first")
        shown_rows = pd.DataFrame(
            {
                "strategy": rows["strategy"],
                "p": rows["p"],
                "reduction": rows["reduction"],
                "seeds": rows["seeds"],
                "value": [
                    _interval(v, lo, hi, percent)
                    for v, lo, hi in rows[["value", "low", "high"]].itertuples(index=False)
                ],
                "vs full": [
                    "" if d is None else _interval(d.value, *(d.interval or (None, None)), percent, sign=True)
                    for d in rows["difference"]
                ],
            }
        )
        lines += [
            f"## {data}, {model}, {int(budget):,} samples: {task} {metric}",
            "",
            shown_rows.to_markdown(index=False),
            "",
        ]
    effect = inverse_effect(table)
    if effect:
        lines += ["## CLIPS's inverse effect (retrieval R@1: a reduced recaption vs the full one)", ""]
        lines += [pd.DataFrame(effect).to_markdown(index=False), ""]
    return "\n".join(lines).rstrip() + "\n"


def inverse_effect_markdown(table: pd.DataFrame) -> str:
    """The section of ``paper.md`` for CLIPS's inverse effect: one line per reduced-recaption comparison, or the
    statement that no run reduces its captions."""
    lines = ["## CLIPS's inverse effect (Liu et al. 2024, arXiv 2411.16828)", ""]
    effect = inverse_effect(table)
    if not effect:
        return "\n".join(lines + ["No run reduces its captions yet: not resolved.", ""])
    return "\n".join(lines + [pd.DataFrame(effect).to_markdown(index=False), ""])
