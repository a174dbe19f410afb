"""Comparison tables and plots across runs: ``python -m report.tables [--results-dir results]``.

For each data set and model family (CLIPs, scored by the embedder tasks; text-to-image models, scored by the
generator tasks): one row per recipe (model, data, strategy, p, training budget and every other setting that
decides the weights except ``train.seed``: ``run.recipe_hash``) with the mean over its training seeds, one column
per main metric with its 95% seed-level interval (``evals.results.seeds``: training-seed and test-query variation),
the delta against the p = 1 row of the same model, data and training budget, and ``*`` where the seed-level test
(paired by seed when both rows have the same seeds, else Welch) gives p-value < 0.05. A row with one seed shows the
query-only bootstrap interval of its record, its delta is the plain difference, and it gets no star: one seed
says nothing about training noise. Whole-set metrics (FID, KID) have no per-query values: over several seeds a t
interval and test on the per-seed values, with one seed the record's interval and a plain difference.
Writes ``results/{data}.md`` + ``.csv`` (CLIPs; the csv holds the seed-level rows, ``{data}_runs.csv`` one row per
run) and ``results/{data}_t2i.md`` + ``.csv`` (text-to-image: the paper's Table 7 in shape), and one PNG per task
(metric against p with interval bars). Metrics declared as
fractions by their task (``TaskSpec.percent``) are shown in %, the others (FID, KID, CLIP score, a 1-5 rating) in
their own unit. p is the probability of the ORIGINAL caption.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from evals.results.records import compare_records, read_record
from evals.tasks.registry import GENERATOR, TASKS
from harness_infra.atomic import atomic_write, atomic_write_bytes
from harness_infra.stagecache import content_hash
from report.faithfulness import captioner_of, faithfulness_curve, faithfulness_markdown
from report.rows import is_baseline_row, missing, seed_rows, shown, with_reduction
from report.strategies import inverse_effect_markdown, strategies_markdown, strategy_rows
from report.verdicts import paper_markdown

log = logging.getLogger(__name__)
MAIN_METRICS = {name: spec.main_metrics for name, spec in TASKS.items() if spec.main_metrics}  # declared with each task
FAMILIES = {
    "clip": ("CLIP trained on caption mixtures", ""),
    "t2i": ("text-to-image DiT trained on caption mixtures (the paper's Table 7 in shape)", "_t2i"),
}
SIGNIFICANCE = 0.05
PAPER_PAGE = "paper.md"  # the verdicts against the paper (report.verdicts)
FAITHFULNESS_PAGE = "faithfulness.md"  # the faithfulness curve (report.faithfulness)
STRATEGIES_PAGE = "strategies.md"  # caption strategies beside p (report.strategies)
RUN_COLUMNS = [
    "data",
    "model",
    "experiment",
    "strategy",
    "p",
    "realised_p",
    "seed",
    "samples_seen",
    "global_batch",
    "train_hash",
    "command",
]


def load_records(results_dir: str) -> List[Dict[str, Any]]:
    """Published records that carry a run section; the newest per (model weights, task, evaluation data, and the
    row it belongs to: training data name, strategy, p).

    Identical results collapse: a re-run that trained bitwise-identical weights (another config hash, same model) and
    evaluated them on the same data set is one row, not two; records without a weights id fall back to the train run.
    The same weights reached by two experiments of different tables (p = 1 never reads recaptions, so it is the same
    run on the scenes and on their CoCa-recaptioned copy) stay a row in each.
    """
    newest: Dict[tuple, Dict[str, Any]] = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "records", "*.json"))):
        record = read_record(path)
        run = record.get("run")
        if not run:
            continue
        record["path"] = path
        weights = (record.get("model") or {}).get("weights_id") or run["train_hash"]
        key = (
            weights,
            record["task_name"],
            (record.get("dataset") or {}).get("fingerprint"),
            run.get("data"),
            run.get("strategy"),
            run.get("p"),
            reduction_of(run),
        )
        if key not in newest or record["created"] >= newest[key]["created"]:
            newest[key] = record
    return list(newest.values())


def run_seed(run: Dict[str, Any]) -> int:
    """The training seed of a run (records published before the ``seed`` field carry it in the resolved config)."""
    if run.get("seed") is not None:
        return int(run["seed"])
    return int(((run.get("resolved_config") or {}).get("train") or {}).get("seed", 0))


def recipe_of(run: Dict[str, Any]) -> str:
    """What the runs of one table row share: ``recipe_hash`` (the train stage's content key without ``train.seed``).
    Records published before it: ``legacy-`` + the hash of the resolved config without its ``run`` and ``experiment``
    sections (where outputs go, the run's label) and ``train.seed`` (it may also split a row over a setting that
    does not change the weights, never join two settings that do); without a resolved config, the run's own
    ``train_hash`` (a row of its own)."""
    if run.get("recipe_hash"):
        return str(run["recipe_hash"])
    resolved = run.get("resolved_config")
    if not resolved:
        return str(run["train_hash"])
    recipe = {k: v for k, v in resolved.items() if k not in ("run", "experiment")}
    recipe["train"] = {k: v for k, v in (recipe.get("train") or {}).items() if k != "seed"}
    return "legacy-" + content_hash(recipe)


def run_commit(run: Dict[str, Any]) -> Optional[str]:
    """The commit checked out when the record's command ran (its first 7 hex digits, ``+ uncommitted changes`` when
    the tree was dirty), or None for records without git provenance. A command alone does not reproduce a run: the
    defaults it leaves out are those of this commit (a train stage found in the cache has the same content key, so
    the same resolved config, even if an earlier commit trained it)."""
    git = run.get("git") or {}
    if not git.get("commit"):
        return None
    return str(git["commit"])[:7] + (" + uncommitted changes" if git.get("dirty") else "")


def reduction_of(run: Dict[str, Any]) -> str:
    """A run's caption reduction (``run.reduction_label``); ``full`` for records published before it existed."""
    return str(run.get("reduction_label") or "full")


def is_baseline(run: Dict[str, Any]) -> bool:
    """The p = 1 (alt-text only) run, on whole captions with one text per image."""
    return run["strategy"] in ("mix", "original") and run["p"] == 1.0 and reduction_of(run) == "full"


def baseline_for(record: Dict[str, Any], records: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The p = 1 record of the same model, data, training budget, seed, task and eval data."""
    run = record["run"]
    for other in records:
        o = other["run"]
        if (
            is_baseline(o)
            and other["task_name"] == record["task_name"]
            and o["model"] == run["model"]
            and o["data"] == run["data"]
            and o["samples_seen"] == run["samples_seen"]
            and run_seed(o) == run_seed(run)
            and (other.get("dataset") or {}).get("fingerprint") == (record.get("dataset") or {}).get("fingerprint")
        ):
            return other
    return None


def delta_vs_baseline(
    record: Dict[str, Any], base: Optional[Dict[str, Any]], metric: str, test: Any
) -> Optional[float]:
    """Metric minus the p = 1 run's: the paired difference for per-query metrics, the plain difference for whole-set
    metrics (FID: no per-query values, so no paired test and no star), 0 for the baseline itself."""
    if base is None:
        return None
    if base is record:
        return 0.0
    if test is not None:
        return test.difference
    value, reference = record["metrics"].get(metric), base["metrics"].get(metric)
    is_whole_set = metric in record.get("whole_set_interval_methods", {})
    return value - reference if is_whole_set and value is not None and reference is not None else None


def chance_of(record: Dict[str, Any]) -> Optional[float]:
    """Zero-shot top-1 by guessing, 1 / classes; None for other tasks."""
    classes = (record.get("n") or {}).get("classes")
    return 1 / classes if record["task"] == "zeroshot_classification" and classes else None


def measured_by(record: Dict[str, Any]) -> Optional[str]:
    """How a record's number was measured, where the number alone does not say: zero-shot chance (1 / classes), the
    CLIP-score evaluator and its validation (swapped-partner preference on real renders, Flickr8k-Expert tau-c), the
    prompt-following recognizer's validation on real renders, FID/KID's generated and reference counts at their
    resolution; None otherwise."""
    extra, n = record.get("extra") or {}, record.get("n") or {}
    chance = chance_of(record)
    if chance is not None:
        return f"chance {100 * chance:.1f}% (1/{n['classes']} classes)"
    if record["task"] == "clip_score" and extra.get("evaluator"):
        note = f"evaluator {extra['evaluator']}"
        swap = extra.get("evaluator_swap_preference")
        if swap:
            note += f", prefers the true prompt over its swapped partner's on {100 * swap['preferred']:.1f}% of {swap['images']} real renders"
        expert = extra.get("evaluator_flickr8k_expert")
        if expert:
            note += f", Kendall tau-c {expert['tau_c']:.1f} with Flickr8k-Expert"
        return note
    if record["task"] == "prompt_following" and extra.get("recognizer_real_overall"):
        real, swap = extra["recognizer_real_overall"], extra.get("recognizer_swap_preference")
        note = f"recognizer: exact scene match on {100 * real['value']:.1f}% of {real['images']} real renders"
        if swap:
            note += f", prefers the true prompt over its swapped partner's on {100 * swap['preferred']:.1f}%"
        return note
    if record["task"] == "fid" and n.get("generated"):
        size = "x".join(str(v) for v in extra.get("reference_size") or extra.get("image_size") or []) or "?"
        return f"N = {n['generated']} generated vs {n.get('reference', '?')} references at {size} px"
    return None


def metric_rows(records: List[Dict[str, Any]]) -> pd.DataFrame:
    """Long table: one row per (run, task, metric) with value, interval, and the delta and paired query-level p-value
    against the p = 1 run of the same seed (``baseline_for``); ``seed_rows`` turns it into the table's rows."""
    rows = []
    for record in records:
        run, task = record["run"], record["task"]
        base = baseline_for(record, records)
        paired = compare_records(record["path"], base["path"]) if base is not None and base is not record else {}
        spec = TASKS.get(task)
        captioner, precision = captioner_of(run)
        for metric in MAIN_METRICS.get(task, ()):
            value = record["metrics"].get(metric)
            interval = record["intervals"].get(metric) or [None, None]
            test = paired.get(metric)
            rows.append(
                {
                    **{c: run.get(c) for c in RUN_COLUMNS},
                    "reduction": reduction_of(run),
                    "reduction_spec": json.dumps(run.get("reduction") or {}, sort_keys=True),
                    "data_fingerprint": run.get("data_fingerprint"),
                    "captioner": captioner,
                    "recap_precision": precision,
                    "seed": run_seed(run),
                    "global_batch": str(run.get("global_batch")),
                    "commit": run_commit(run),
                    "family": "t2i" if spec.evaluates == GENERATOR else "clip",
                    "percent": spec.percent,
                    "lower_is_better": metric in spec.lower_is_better,
                    "task": record["task_name"],
                    "dataset": (record.get("dataset") or {}).get("fingerprint"),
                    "metric": metric,
                    "value": value,
                    "ci_low": interval[0],
                    "ci_high": interval[1],
                    "n": record["n"].get("image_queries") or record["n"].get("images"),
                    "delta_vs_p1": delta_vs_baseline(record, base, metric, test),
                    "delta_p_value": test.p_value if test else None,
                    "recipe": recipe_of(run),
                    "kind": task,
                    "prompt_source": (record.get("extra") or {}).get("prompt_source"),
                    "measured_by": measured_by(record),
                    "chance": chance_of(record),
                    "created": record["created"],
                    "path": record["path"],
                    "per_query": bool(record.get("per_query_file"))
                    and metric not in record.get("whole_set_interval_methods", {}),
                }
            )
    return pd.DataFrame(rows)


def separate_data_versions(long: pd.DataFrame) -> Tuple[pd.DataFrame, List[str]]:
    """(``long`` with a ``table_task`` column, one note per task that was scored on more than one version of its data
    set). ``table_task`` is the task's name, or ``task@version`` (the content fingerprint's shortest unique prefix of at
    least 8 characters; ``unknown`` for records without one) when the task has several versions: tables and plots
    group by it, so a column or a curve never joins values measured on different data (a zero-shot set rebuilt, or
    subsampled, between two evaluations). ``task`` keeps the registered name (the CSV has both and ``dataset``)."""
    notes: List[str] = []
    shown = long["task"].copy()
    for task, rows in long.groupby("task"):
        versions = list(dict.fromkeys(None if missing(v) else str(v) for v in rows["dataset"]))
        if len(versions) < 2:
            continue
        known = [v for v in versions if v is not None]
        width = 8
        while len({v[:width] for v in known}) < len(known):
            width += 4
        label = {v: (v[:width] if v is not None else "unknown") for v in versions}
        mask = long["task"] == task
        shown[mask] = [f"{task}@{label[None if missing(v) else str(v)]}" for v in long.loc[mask, "dataset"]]
        sizes = {
            v: rows.loc[rows["dataset"].isna() if v is None else rows["dataset"] == v, "n"].iloc[0] for v in versions
        }
        described = ", ".join(label[v] + ("" if missing(sizes[v]) else f": n = {int(sizes[v])}") for v in versions)
        notes.append(
            f"{task} was scored on {len(versions)} versions of its data set ({described}): each has its own "
            "columns and plot (task@version); values on different versions are not comparable."
        )
    return long.assign(table_task=shown), notes


def cell(row: pd.Series) -> str:
    """'61.2 [59.1, 63.0] (+3.1*)': value, 95% interval and delta vs p = 1 (* = significant at the seed level, so
    never on a row with one seed: ``seed_rows`` gives it no p-value); fractions in %."""
    as_percent = bool(row.get("percent", True))
    text = (
        f"{shown(row['value'], as_percent)} [{shown(row['ci_low'], as_percent)}, {shown(row['ci_high'], as_percent)}]"
    )
    if not missing(row["delta_vs_p1"]) and not is_baseline_row(row):
        star = "*" if not missing(row["delta_p_value"]) and row["delta_p_value"] < SIGNIFICANCE else ""
        text += f" ({shown(row['delta_vs_p1'], as_percent, sign=True)}{star})"
    return text


def wide_table(long: pd.DataFrame) -> pd.DataFrame:
    """One row per recipe (``seed_rows``), one column per task:metric cell, sorted by strategy, caption reduction
    (``full`` first) then p; ``seeds`` lists the training seeds each row averages."""
    long = with_reduction(long)
    task = long["table_task"] if "table_task" in long else long["task"]
    realised = long["realised_p"] if "realised_p" in long else pd.Series(None, index=long.index, dtype=float)
    long = long.assign(
        column=task + " " + long["metric"],
        cell=long.apply(cell, axis=1),
        p=long["p"].astype(float).fillna(-1.0),  # concat has no p; pivot drops missing index values
        realised_p=realised.astype(float).fillna(-1.0),
    )
    index = ["model", "strategy", "reduction", "p", "realised_p", "seeds", "samples_seen", "global_batch", "recipe"]
    wide = (
        long.pivot_table(index=index, columns="column", values="cell", aggfunc="first")
        .reset_index()
        .fillna("not scored")
    )
    wide["order"] = wide["strategy"].map(lambda s: 1 if s == "concat" else 0)
    # whole captions first, then each reduction
    wide["whole"] = wide["reduction"].map(lambda r: 0 if r == "full" else 1)
    wide = wide.sort_values(["model", "samples_seen", "order", "whole", "reduction", "p", "seeds"]).drop(
        columns=["order", "whole", "recipe"]
    )
    wide["p"] = [p_label(p, r) for p, r in zip(wide["p"], wide.pop("realised_p"))]
    return wide


def p_label(p: float, realised: float) -> str:
    """The p column: the label, with the realised original fraction beside it where the two differ at the fourth
    decimal (``0.5 (realised 0.4987)``); negative values stand for none (concat has no p; older records no realised)."""
    if p < 0:
        return "n/a"
    if realised < 0 or f"{realised:.4f}" == f"{p:.4f}":
        return f"{p:g}"
    return f"{p:g} (realised {realised:.4f})"


def markdown(data: str, wide: pd.DataFrame, long: pd.DataFrame, family: str = "clip", notes: Sequence[str] = ()) -> str:
    """The markdown page of one data set and model family (``FAMILIES``), with its commands (each with its commit:
    ``run_commit``) and ``notes`` (a line each, after the table: data-set versions kept apart)."""
    produced = long.dropna(subset=["command"])
    commands = sorted(
        {
            f"{c}    # at commit {k}" if isinstance(k, str) else c
            for c, k in zip(produced["command"], produced["commit"])
        }
    )
    units = (
        "metric in %, the mean over the row's training seeds (column seeds), with its 95% interval over training "
        "seeds and test queries (evals.results.seeds; a row with one seed: the query-only bootstrap interval of its "
        "record, which does not cover training-seed variation)"
    )
    if family == "t2i":
        lower = sorted(set(long.loc[long["lower_is_better"].astype(bool), "metric"]))
        units = (
            "fractions (prompt following) in %, FID, KID, CLIP scores (0-100) and ratings in their own unit, each the mean "
            "over the row's training seeds (column seeds) with its 95% interval: over seeds (and prompts, for per-prompt "
            "metrics; FID and KID: a t interval over the per-seed values) with several seeds; with one seed the record's "
            "(FID: bootstrap over the generated images, centred on the FID; KID: over subsets), which does not cover "
            "training-seed variation"
            + (f"; lower is better for {', '.join(lower)}, higher for the rest" if lower else "")
        )
    test = (
        f"seed-level t test (paired by seed when both rows have the same seeds, else Welch), p-value < {SIGNIFICANCE}; "
        "where either row has one seed, no star and the plain difference, against the p = 1 run of the same seed when "
        "there is one"
    )
    lines = [
        f"# {data}: {FAMILIES[family][0]}",
        "",
        f"p = probability of the ORIGINAL caption per sample (p = 1: alt-text only). Cells: {units}, then (delta vs the "
        f"p = 1 row of the same model, data and budget; * = {test}).",
        "",
        wide.to_markdown(index=False),
        "",
    ]
    measured = long.dropna(subset=["measured_by"]) if "measured_by" in long else long.iloc[0:0]
    for task, settings in measured.groupby("task", sort=True)["measured_by"]:
        lines.append(f"Measured with ({task}): {'; '.join(sorted(set(settings)))}.")
    lines += [""] if len(measured) else []
    lines += (
        [f"Note: {note}" for note in notes]
        + ([""] if notes else [])
        + ["Produced by (each command with the commit whose defaults it ran under, where the record has it):", ""]
    )
    lines += [f"    {c}" for c in commands]
    return "\n".join(lines) + "\n"


DODGE = 0.012  # x offset between metrics (in p units): equal values (top-1 = mean per-class recall on a balanced set) stay visible
LINESTYLES = ("-", ":", "-.", (0, (5, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_series(rows: pd.DataFrame) -> List[Dict[str, Any]]:
    """The curves of one task's plot (rows of ``seed_rows``): one per (metric, training budget, seed set, caption
    reduction), never joining different budgets, reductions or rows of different seeds (a p with three seeds and a p
    with one).

    Each: {metric, label, style (the budget/seed rank), marker (the metric's), x (p + the metric's dodge), y, err_low,
    err_high (percent)} for mixed runs, and {..., "concat": y} lines for concat runs. Metrics are dodged sideways by
    ``DODGE`` and get their own marker, so a metric equal to another (top-1 = mean per-class recall on a balanced set)
    stays visible.
    """
    rows = with_reduction(rows)
    budgets = rows["samples_seen"].fillna(-1).astype(int)
    reductions = rows["reduction"].astype(str)
    groups = sorted(
        {(int(b), str(s), r) for b, s, r in zip(budgets, rows["seeds"], reductions)},
        key=lambda g: (g[0], g[1], g[2] != "full", g[2]),
    )
    metrics = list(dict.fromkeys(rows["metric"]))
    several_budgets, several_seeds = len({b for b, _, _ in groups}) > 1, len({s for _, s, _ in groups}) > 1
    several_reductions = len({r for _, _, r in groups}) > 1
    series: List[Dict[str, Any]] = []
    for index, metric in enumerate(metrics):
        offset = (index - (len(metrics) - 1) / 2) * DODGE
        for rank, (budget, seed, reduction) in enumerate(groups):
            runs = rows[
                (rows["metric"] == metric)
                & (budgets == budget)
                & (rows["seeds"].astype(str) == seed)
                & (reductions == reduction)
            ]
            if runs.empty:
                continue
            named = f"seeds {seed}" if "," in seed else f"seed {seed}"
            parts = (
                ([f"{budget:,} samples"] if several_budgets else [])
                + ([named] if several_seeds else [])
                + ([reduction] if several_reductions else [])
            )
            label = f"{metric} ({', '.join(parts)})" if parts else metric
            base = {
                "metric": metric,
                "index": index,
                "label": label,
                "style": rank,
                "marker": MARKERS[index % len(MARKERS)],
                "samples_seen": budget,
                "seeds": seed,
            }
            scale = 100.0 if "percent" not in runs or bool(runs["percent"].iloc[0]) else 1.0  # fractions in %
            mixed = runs[runs["strategy"] != "concat"].dropna(subset=["p", "value"]).sort_values("p")
            if not mixed.empty:
                series.append(
                    {
                        **base,
                        "x": (mixed["p"].astype(float) + offset).tolist(),
                        "y": (mixed["value"] * scale).tolist(),
                        "err_low": ((mixed["value"] - mixed["ci_low"]) * scale).tolist(),
                        "err_high": ((mixed["ci_high"] - mixed["value"]) * scale).tolist(),
                    }
                )
            for _, concat in runs[runs["strategy"] == "concat"].iterrows():
                series.append({**base, "label": f"{label} (concat)", "concat": float(concat["value"]) * scale})
    return series


def plot(data: str, task: str, long: pd.DataFrame, path: str) -> None:
    """Each main metric of ``task`` against p with 95% interval bars (``plot_series``); concat runs drawn as horizontal
    dashed lines. Fractions share one axis in %; metrics in their own units (FID and KID) get one axis each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = long[long["task"] == task]
    as_percent = "percent" not in rows or bool(rows["percent"].iloc[0])
    panels = [rows] if as_percent else [rows[rows["metric"] == m] for m in dict.fromkeys(rows["metric"])]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(8.4 if as_percent else 4.6 * len(panels) + 2.0, 4.2), squeeze=False
    )
    for ax, panel in zip(axes[0], panels):
        curves = plot_series(panel)
        series_metrics = len({c["metric"] for c in curves})
        for curve in curves:
            color = f"C{curve['index']}"
            if "concat" in curve:  # interleaved dashes (offset per metric): equal concat values show every colour
                count = max(series_metrics, 1)
                dashes = (2.0 * curve["index"], (2.0, 2.0 * (count - 1))) if count > 1 else "--"
                ax.axhline(curve["concat"], color=color, linestyle=dashes, linewidth=1.2, label=curve["label"])
            else:  # intervals drawn from their ends, so one that does not hold its point (a percentile bootstrap) still shows
                ax.plot(
                    curve["x"],
                    curve["y"],
                    marker=curve["marker"],
                    color=color,
                    label=curve["label"],
                    linestyle=LINESTYLES[curve["style"] % len(LINESTYLES)],
                    markerfacecolor=color if curve["style"] == 0 else "white",
                )  # hollow markers: another budget or seed
                low = [y - e for y, e in zip(curve["y"], curve["err_low"])]
                high = [y + e for y, e in zip(curve["y"], curve["err_high"])]
                ax.vlines(curve["x"], low, high, color=color, linewidth=1.0)
                ax.scatter(curve["x"] * 2, low + high, marker="_", color=color, s=40)
        chance = panel["chance"].dropna() if "chance" in panel else pd.Series(dtype=float)
        if len(chance):  # zero-shot: the level of guessing, so a curve near it reads as no learning
            ax.axhline(100 * float(chance.iloc[0]), color="grey", linestyle=":", linewidth=1.2, label="chance (top-1)")
        ax.set_xlabel("p = probability of the ORIGINAL caption")
        settings = sorted(set(panel["measured_by"].dropna())) if "measured_by" in panel else []
        subtitle = ("\n" + "; ".join(settings)) if settings else ""
        if as_percent:
            ax.set_ylabel("%")
            ax.set_title(f"{data}: {task}{subtitle}", fontsize=9)
        else:
            metric = panel["metric"].iloc[0]
            lower = "lower_is_better" in panel and bool(panel["lower_is_better"].iloc[0])
            ax.set_ylabel(metric + (" (lower is better)" if lower else ""))
            ax.set_title((f"{data}: {task}" if len(panels) == 1 else f"{task}: {metric}") + subtitle, fontsize=9)
        ax.grid(alpha=0.3)
        if len(panels) > 1:  # each panel its own metric: each its own legend
            ax.legend(fontsize=7, loc="best")
    if len(panels) == 1:
        axes[0][-1].legend(
            fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0)
        )  # outside the axes: never over the data
    if not as_percent and len(panels) > 1:
        fig.suptitle(data)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=120))
    plt.close(fig)


def write_tables(
    results_dir: str = "results", data_name: Optional[str] = None, family: Optional[str] = None
) -> Optional[str]:
    """Write every data set's tables (md + csv, one per model family of ``FAMILIES``), plots and ``paper.md`` (the
    verdicts against the paper, ``report.verdicts``); return the markdown
    path of ``data_name`` and ``family`` (its first family when None or absent; else the last written)."""
    records = load_records(results_dir)
    if not records:
        log.warning("no published records in %s/records", results_dir)
        return None
    long = metric_rows(records)
    written: Dict[str, str] = {}
    versioned = []
    for (data, family_name), group in long.groupby(["data", "family"]):
        suffix = FAMILIES[family_name][1]
        group, notes = separate_data_versions(group)
        versioned.append(group)
        rows_of_table = seed_rows(group)
        wide = wide_table(rows_of_table)
        md_path = os.path.join(results_dir, f"{data}{suffix}.md")
        atomic_write_bytes(md_path, markdown(data, wide, group, family_name, notes).encode("utf-8"))
        atomic_write_bytes(
            os.path.join(results_dir, f"{data}{suffix}.csv"), rows_of_table.to_csv(index=False).encode("utf-8")
        )
        runs_csv = group.drop(columns=["path", "per_query"])
        atomic_write_bytes(
            os.path.join(results_dir, f"{data}{suffix}_runs.csv"), runs_csv.to_csv(index=False).encode("utf-8")
        )
        plotted = rows_of_table.assign(task=rows_of_table["table_task"])  # one curve per data-set version
        for task in plotted["task"].unique():
            if plotted.loc[plotted["task"] == task, "value"].isna().all():  # nothing measured (a judge not configured)
                log.info("%s: no values for %s, no plot", data, task)
                continue
            models = plotted[plotted["task"] == task]["model"].unique()
            for model in models:  # one plot per model: p-curves of different models are different experiments
                name = f"{data}{suffix}_{task}.png" if len(models) == 1 else f"{data}{suffix}_{task}_{model}.png"
                rows = plotted[plotted["model"] == model]
                plot(data if len(models) == 1 else f"{data}, {model}", task, rows, os.path.join(results_dir, name))
        log.info("wrote %s (%d rows, %d runs)", md_path, len(wide), group["train_hash"].nunique())
        written.setdefault(data, md_path)
        written[(data, family_name)] = md_path
    every = pd.concat(versioned)
    strategies = strategy_rows(every)
    paper = paper_markdown(every).rstrip() + "\n\n" + inverse_effect_markdown(strategies)
    atomic_write_bytes(os.path.join(results_dir, PAPER_PAGE), paper.encode("utf-8"))
    strategies_page = strategies_markdown(strategies)
    if strategies_page is not None:  # only once a run reduces its captions
        atomic_write_bytes(os.path.join(results_dir, STRATEGIES_PAGE), strategies_page.encode("utf-8"))
    faithfulness = faithfulness_markdown(faithfulness_curve(every))
    if faithfulness is not None:  # only once a data set has a captioner besides its own recaptions
        atomic_write_bytes(os.path.join(results_dir, FAITHFULNESS_PAGE), faithfulness.encode("utf-8"))
    return written.get((data_name, family)) or written.get(data_name, md_path)


def main() -> None:
    """CLI: rebuild all tables from the published records."""
    parser = argparse.ArgumentParser(description="Rebuild results tables and plots from results/records.")
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = write_tables(args.results_dir)
    print(f"table: {path}" if path else f"no records in {args.results_dir}/records")


if __name__ == "__main__":
    main()
