"""Comparison tables and plots across runs: ``python -m evals.tables [--results-dir results]``.

For each data set: one row per trained run (p, strategy, model, samples seen), one column per main
metric with its 95% bootstrap interval, the delta against the p = 1 baseline of the same model, data
and training budget, and ``*`` where the paired test (sign-flip permutation over the same queries)
gives p-value < 0.05. Writes ``results/{data}.md``, ``results/{data}.csv`` and one PNG per task
(metric against p with interval bars). p is the probability of the ORIGINAL caption.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
from typing import Any, Dict, List, Optional

import pandas as pd

from harness_infra.atomic import atomic_write, atomic_write_bytes
from evals.results.records import compare_records, read_record
from evals.tasks.registry import TASKS

log = logging.getLogger(__name__)
MAIN_METRICS = {name: spec.main_metrics for name, spec in TASKS.items() if spec.main_metrics}  # declared with each task
SIGNIFICANCE = 0.05
RUN_COLUMNS = ["data", "model", "experiment", "strategy", "p", "seed", "samples_seen", "global_batch", "train_hash", "command"]


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
        key = (weights, record["task_name"], (record.get("dataset") or {}).get("fingerprint"), run.get("data"), run.get("strategy"), run.get("p"))
        if key not in newest or record["created"] >= newest[key]["created"]:
            newest[key] = record
    return list(newest.values())


def run_seed(run: Dict[str, Any]) -> int:
    """The training seed of a run (records published before the ``seed`` field carry it in the resolved config)."""
    if run.get("seed") is not None:
        return int(run["seed"])
    return int(((run.get("resolved_config") or {}).get("train") or {}).get("seed", 0))


def is_baseline(run: Dict[str, Any]) -> bool:
    """The p = 1 (alt-text only) run."""
    return run["strategy"] in ("mix", "original") and run["p"] == 1.0


def baseline_for(record: Dict[str, Any], records: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The p = 1 record of the same model, data, training budget, seed, task and eval data."""
    run = record["run"]
    for other in records:
        o = other["run"]
        if (is_baseline(o) and other["task_name"] == record["task_name"] and o["model"] == run["model"] and o["data"] == run["data"]
                and o["samples_seen"] == run["samples_seen"] and run_seed(o) == run_seed(run) and other["dataset"].get("fingerprint") == record["dataset"].get("fingerprint")):
            return other
    return None


def delta_vs_baseline(record: Dict[str, Any], base: Optional[Dict[str, Any]], metric: str, test: Any) -> Optional[float]:
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


def metric_rows(records: List[Dict[str, Any]]) -> pd.DataFrame:
    """Long table: one row per (run, task, metric) with value, interval, delta vs baseline and paired p-value."""
    rows = []
    for record in records:
        run, task = record["run"], record["task"]
        base = baseline_for(record, records)
        paired = compare_records(record["path"], base["path"]) if base is not None and base is not record else {}
        for metric in MAIN_METRICS.get(task, ()):
            value = record["metrics"].get(metric)
            interval = record["intervals"].get(metric) or [None, None]
            test = paired.get(metric)
            rows.append({**{c: run.get(c) for c in RUN_COLUMNS}, "seed": run_seed(run), "global_batch": str(run.get("global_batch")),
                         "task": record["task_name"], "metric": metric, "value": value, "ci_low": interval[0], "ci_high": interval[1],
                         "n": record["n"].get("image_queries") or record["n"].get("images"),
                         "delta_vs_p1": delta_vs_baseline(record, base, metric, test),
                         "delta_p_value": test.p_value if test else None})
    return pd.DataFrame(rows)


def percent(value: Optional[float]) -> str:
    """A fraction as a percentage with one decimal, or n/a."""
    return "n/a" if value is None or pd.isna(value) else f"{100 * value:.1f}"


def cell(row: pd.Series) -> str:
    """'61.2 [59.1, 63.0] (+3.1*)': value, 95% interval and delta vs p = 1 (* = significant)."""
    text = f"{percent(row['value'])} [{percent(row['ci_low'])}, {percent(row['ci_high'])}]"
    if row["delta_vs_p1"] is not None and not pd.isna(row["delta_vs_p1"]) and not (row["p"] == 1.0 and row["strategy"] in ("mix", "original")):
        star = "*" if row["delta_p_value"] is not None and row["delta_p_value"] < SIGNIFICANCE else ""
        text += f" ({100 * row['delta_vs_p1']:+.1f}{star})"
    return text


def wide_table(long: pd.DataFrame) -> pd.DataFrame:
    """One row per run, one column per task:metric cell, sorted by strategy then p."""
    long = long.assign(column=long["task"] + " " + long["metric"], cell=long.apply(cell, axis=1),
                       p=long["p"].astype(float).fillna(-1.0))  # concat has no p; pivot drops missing index values
    index = ["model", "strategy", "p", "seed", "samples_seen", "global_batch", "train_hash"]
    wide = long.pivot_table(index=index, columns="column", values="cell", aggfunc="first").reset_index()
    wide["order"] = wide["strategy"].map(lambda s: 1 if s == "concat" else 0)
    wide = wide.sort_values(["model", "samples_seen", "order", "p", "seed"]).drop(columns=["order", "train_hash"])
    wide["p"] = wide["p"].map(lambda p: "n/a" if p < 0 else f"{p:g}")
    return wide


def markdown(data: str, wide: pd.DataFrame, long: pd.DataFrame) -> str:
    """The markdown page of one data set, with its commands."""
    commands = sorted(set(long["command"].dropna()))
    lines = [f"# {data}: CLIP trained on caption mixtures", "",
             "p = probability of the ORIGINAL caption per sample (p = 1: alt-text only). Cells: metric in % with its 95% "
             "bootstrap interval, then (delta vs the p = 1 run of the same model, data, budget and training seed; * = paired "
             f"permutation test over the test queries, p-value < {SIGNIFICANCE}; it does not cover training-seed variation, which "
             "rows with several seeds show).", "", wide.to_markdown(index=False), "", "Produced by:", ""]
    lines += [f"    {c}" for c in commands]
    return "\n".join(lines) + "\n"


DODGE = 0.012  # x offset between metrics (in p units): equal values (top-1 = mean per-class recall on a balanced set) stay visible
LINESTYLES = ("-", ":", "-.", (0, (5, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_series(rows: pd.DataFrame) -> List[Dict[str, Any]]:
    """The curves of one task's plot: one per (metric, training budget, seed), never joining different budgets or seeds.

    Each: {metric, label, style (the budget/seed rank), marker (the metric's), x (p + the metric's dodge), y, err_low,
    err_high (percent)} for mixed runs, and {..., "concat": y} lines for concat runs. Metrics are dodged sideways by
    ``DODGE`` and get their own marker, so a metric equal to another (top-1 = mean per-class recall on a balanced set)
    stays visible.
    """
    budgets = rows["samples_seen"].fillna(-1).astype(int)
    groups = sorted({(int(b), int(s)) for b, s in zip(budgets, rows["seed"])})
    metrics = list(dict.fromkeys(rows["metric"]))
    several_budgets, several_seeds = len({b for b, _ in groups}) > 1, len({s for _, s in groups}) > 1
    series: List[Dict[str, Any]] = []
    for index, metric in enumerate(metrics):
        offset = (index - (len(metrics) - 1) / 2) * DODGE
        for rank, (budget, seed) in enumerate(groups):
            runs = rows[(rows["metric"] == metric) & (budgets == budget) & (rows["seed"] == seed)]
            if runs.empty:
                continue
            parts = ([f"{budget:,} samples"] if several_budgets else []) + ([f"seed {seed}"] if several_seeds else [])
            label = f"{metric} ({', '.join(parts)})" if parts else metric
            base = {"metric": metric, "index": index, "label": label, "style": rank, "marker": MARKERS[index % len(MARKERS)],
                    "samples_seen": budget, "seed": seed}
            mixed = runs[runs["strategy"] != "concat"].dropna(subset=["p", "value"]).sort_values("p")
            if not mixed.empty:
                series.append({**base, "x": (mixed["p"].astype(float) + offset).tolist(), "y": (mixed["value"] * 100).tolist(),
                               "err_low": ((mixed["value"] - mixed["ci_low"]) * 100).tolist(),
                               "err_high": ((mixed["ci_high"] - mixed["value"]) * 100).tolist()})
            for _, concat in runs[runs["strategy"] == "concat"].iterrows():
                series.append({**base, "label": f"{label} (concat)", "concat": float(concat["value"]) * 100})
    return series


def plot(data: str, task: str, long: pd.DataFrame, path: str) -> None:
    """Each main metric of ``task`` against p with 95% interval bars (``plot_series``); concat runs drawn as horizontal
    dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    curves = plot_series(long[long["task"] == task])
    series_metrics = len({c["metric"] for c in curves})
    for curve in curves:
        color = f"C{curve['index']}"
        if "concat" in curve:  # interleaved dashes (offset per metric): equal concat values show every colour
            count = max(series_metrics, 1)
            dashes = (2.0 * curve["index"], (2.0, 2.0 * (count - 1))) if count > 1 else "--"
            ax.axhline(curve["concat"], color=color, linestyle=dashes, linewidth=1.2, label=curve["label"])
        else:
            ax.errorbar(curve["x"], curve["y"], yerr=[curve["err_low"], curve["err_high"]], marker=curve["marker"], capsize=3,
                        color=color, linestyle=LINESTYLES[curve["style"] % len(LINESTYLES)], label=curve["label"],
                        markerfacecolor=color if curve["style"] == 0 else "white")  # hollow markers: another budget or seed
    ax.set_xlabel("p = probability of the ORIGINAL caption")
    ax.set_ylabel("%")
    ax.set_title(f"{data}: {task}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the axes: never over the data
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=120))
    plt.close(fig)


def write_tables(results_dir: str = "results", data_name: Optional[str] = None) -> Optional[str]:
    """Write every data set's table (md + csv) and plots; return the markdown path of ``data_name`` (else the last)."""
    records = load_records(results_dir)
    if not records:
        log.warning("no published records in %s/records", results_dir)
        return None
    long = metric_rows(records)
    written: Dict[str, str] = {}
    for data, group in long.groupby("data"):
        wide = wide_table(group)
        md_path = os.path.join(results_dir, f"{data}.md")
        atomic_write_bytes(md_path, markdown(data, wide, group).encode("utf-8"))
        atomic_write_bytes(os.path.join(results_dir, f"{data}.csv"), group.to_csv(index=False).encode("utf-8"))
        for task in group["task"].unique():
            models = group[group["task"] == task]["model"].unique()
            for model in models:  # one plot per model: p-curves of different models are different experiments
                name = f"{data}_{task}.png" if len(models) == 1 else f"{data}_{task}_{model}.png"
                rows = group[group["model"] == model]
                plot(data if len(models) == 1 else f"{data}, {model}", task, rows, os.path.join(results_dir, name))
        log.info("wrote %s (%d runs)", md_path, len(wide))
        written[data] = md_path
    return written.get(data_name, md_path)


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
