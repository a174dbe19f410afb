"""Verdicts against the paper, computed from the published records: ``results/paper.md``.

Each finding of the paper's Table 3 (CLIP) and Table 7 (DiT) (Li et al. 2024, "What If We Recaption Billions of Web
Images with LLaMA-3?"; the values as ``PAPER.md`` transcribes them) becomes comparisons of two table rows of one
data set and model: a p against p = 1, p = 0 against p = 1, concat against the best mixture. The paper's direction
of each is the sign of its own difference (Table 3: every COCO and Flickr30K retrieval column agrees in sign for
every p, so one sign stands for all; Table 7: each column's). For each comparison: our values, the seed-level
difference (``report.rows.row_difference``) and a verdict:

- ``reproduced``: both rows have at least ``MIN_SEEDS`` training seeds and the seed-level test (p < 0.05) finds a
  difference in the paper's direction;
- ``opposite``: as above, against the paper's direction;
- ``not resolved at N seeds``: fewer seeds than ``MIN_SEEDS`` on either row (the test, where there is one, is shown
  but not used), or no significant difference.

Columns are found by what a task measures, not by its name: retrieval = tasks registered as ``retrieval`` (R@1 both
ways, the paper's metric; each retrieval task on its own line, so template and held-out queries are judged apart), zero-shot = ``zeroshot_classification`` (top-1); Table 7: ``fid`` and ``clip_score``
by the record's prompt source (raw = the original caption, recap = the recaption) and ``vlm_judge``. The paper's
Recap-CLIP column is a CLIP score from a CLIP trained on recaptions: a clip_score task whose name ends in
``_recapclip`` (``conf/eval/t2i_scenes.yaml``); the other recap clip_score task is the paper's CLIP column. The best
mixture of "concat vs the best mixture" is the mixed p in (0, 1) with the highest mean: chosen on the same data, so
the comparison favours the mixture (said in the file). Where two recipes of one model share a p (a recipe changed
between runs), the one with the most training seeds stands for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from report.rows import ROW_KEYS, missing, plain_difference, row_difference, row_groups, seed_level, shown

MIN_SEEDS = 3
SIGNIFICANCE = 0.05
SOURCE = (
    'Li et al. 2024, "What If We Recaption Billions of Web Images with LLaMA-3?", as ../shared/PAPER.md transcribes it'
)

# Table 3, ViT-B/16: p -> (IN-1K top-1, COCO I->T, COCO T->I, F30K I->T, F30K T->I); "concat" for concat.
TABLE3 = {
    0.0: (36.0, 53.0, 34.1, 74.1, 53.5),
    0.2: (62.5, 61.7, 41.4, 85.8, 65.7),
    0.4: (66.7, 62.6, 42.5, 87.4, 67.7),
    0.5: (67.2, 61.9, 42.7, 85.9, 66.7),
    0.8: (69.2, 61.5, 42.2, 85.2, 66.9),
    1.0: (69.7, 57.3, 37.7, 84.2, 63.0),
    "concat": (43.3, 57.8, 35.6, 80.2, 56.4),
}
# Table 7, DiT-B/4: p -> (raw FID, raw CLIP, recap FID, recap CLIP, Recap-CLIP, GPT-4V).
TABLE7 = {
    0.0: (37.6, 29.2, 27.8, 32.5, 28.3, 2.53),
    0.1: (36.0, 29.7, 27.2, 32.7, 28.2, 2.51),
    0.5: (35.3, 29.3, 30.2, 31.9, 26.7, 2.13),
    0.75: (31.3, 29.4, 32.7, 31.2, 25.8, 1.89),
    1.0: (32.5, 28.9, 36.2, 29.3, 19.9, 1.40),
}
TABLE7_COLUMNS = ("raw FID", "raw CLIP", "recap FID", "recap CLIP", "Recap-CLIP", "GPT-4V")


@dataclass(frozen=True)
class Column:
    """One of our metrics standing for a column of the paper: rows of ``kind`` (the registered task), ``metric``,
    and for generator tasks the record's ``prompt_source`` and whether the evaluator is the recaption-trained one."""

    label: str
    kind: str
    metric: str
    prompt_source: Optional[str] = None
    recap_evaluator: Optional[bool] = None

    def matches(self, row: pd.Series) -> bool:
        """Whether a per-run row of the tables measures this column."""
        if row["kind"] != self.kind or row["metric"] != self.metric:
            return False
        if self.prompt_source is not None and row.get("prompt_source") != self.prompt_source:
            return False
        if self.recap_evaluator is not None and str(row["task"]).endswith("_recapclip") != self.recap_evaluator:
            return False
        return True


CLIP_COLUMNS = (
    Column("retrieval i2t R@1", "retrieval", "i2t_R@1"),
    Column("retrieval t2i R@1", "retrieval", "t2i_R@1"),
    Column("zero-shot top-1", "zeroshot_classification", "top1"),
)
T2I_COLUMNS = (
    Column("raw FID", "fid", "fid", "original"),
    Column("raw CLIP", "clip_score", "clip_score", "original", False),
    Column("recap FID", "fid", "fid", "recap"),
    Column("recap CLIP", "clip_score", "clip_score", "recap", False),
    Column("Recap-CLIP", "clip_score", "clip_score", "recap", True),
    Column("GPT-4V", "vlm_judge", "judge_rating"),  # the judge scores recap prompts (its records name no source)
)


def paper_values(column: Column, p: Any) -> Optional[Tuple[float, ...]]:
    """The paper's values for our column at p (Table 3: retrieval = its four retrieval columns, zero-shot = IN-1K;
    Table 7: the column of the same name); None where the paper has no such p."""
    if column in CLIP_COLUMNS:
        row = TABLE3.get(p)
        if row is None:
            return None
        return (row[0],) if column.kind == "zeroshot_classification" else row[1:]
    row = TABLE7.get(p)
    return None if row is None else (row[TABLE7_COLUMNS.index(column.label)],)


def paper_sign(column: Column, a: Any, b: Any) -> Optional[int]:
    """The sign of the paper's a - b on this column (+1, -1), 0 where its columns disagree, None where it lacks one."""
    va, vb = paper_values(column, a), paper_values(column, b)
    if va is None or vb is None:
        return None
    signs = {(x > y) - (x < y) for x, y in zip(va, vb)}
    return signs.pop() if len(signs) == 1 else 0


def verdict(difference: Any, seeds: int, sign: Optional[int]) -> str:
    """reproduced / opposite / not resolved at N seeds (module docstring)."""
    if seeds < MIN_SEEDS or difference is None:
        return f"not resolved at {seeds} seed{'s' if seeds != 1 else ''} (a verdict needs {MIN_SEEDS})"
    if difference.p_value is None or difference.p_value >= SIGNIFICANCE or not sign:
        return f"not resolved at {seeds} seeds (no seed-level difference)" if sign else "the paper shows no direction"
    ours = 1 if difference.value > 0 else -1
    return "reproduced" if ours == sign else "opposite"


def _paper_text(column: Column, a: Any, b: Any) -> str:
    va, vb = paper_values(column, a), paper_values(column, b)
    if va is None or vb is None:
        return "n/a"
    return "; ".join(f"{x:g} vs {y:g}" for x, y in zip(va, vb))


def comparisons(
    groups: Dict[tuple, pd.DataFrame], columns: Sequence[Column], clip: bool, unscored: Optional[set] = None
) -> List[Dict[str, Any]]:
    """Every finding's comparison available in one data set's row groups (``report.rows.row_groups``); columns whose
    records hold no value (a judge that was not configured) are added to ``unscored`` instead."""
    out: List[Dict[str, Any]] = []
    cache: Dict[str, Any] = {}
    by_model: Dict[Tuple[str, Any, str, str], Dict[Any, Tuple[tuple, pd.DataFrame]]] = {}
    for key, runs in groups.items():
        named = dict(zip(ROW_KEYS, key))
        first = runs.iloc[-1]
        for column in columns:
            if column.matches(first):
                if runs["value"].isna().all():
                    if unscored is not None:
                        unscored.add(column.label)
                    continue
                label = "concat" if named["strategy"] == "concat" else named["p"]
                if named["strategy"] not in ("mix", "original", "recap", "concat") or named["reduction"] != "full":
                    continue  # a caption strategy the paper did not study (reduced captions, several positives)
                slot = by_model.setdefault(
                    (named["model"], named["samples_seen"], named["table_task"], column.label), {}
                )
                if label not in slot or len(runs) > len(slot[label][1]):  # two recipes at one p: the most seeds
                    slot[label] = (key, runs)
    for (model, budget, task, label), rows in by_model.items():
        column = next(c for c in columns if c.label == label)
        if 1.0 not in rows:
            continue
        pairs: List[Tuple[str, Any, Any]] = []
        mixtures = sorted(p for p in rows if p not in ("concat", 0.0, 1.0))
        for p in mixtures:
            pairs.append((f"p = {p:g} vs p = 1", p, 1.0))
        if 0.0 in rows:
            pairs.append(("p = 0 vs p = 1", 0.0, 1.0))
        if clip and "concat" in rows and mixtures:
            best = max(mixtures, key=lambda p: rows[p][1]["value"].mean())
            pairs.append((f"concat vs the best mixture (p = {best:g}, chosen on these data)", "concat", best))
        for name, a, b in pairs:
            runs_a, runs_b = rows[a][1], rows[b][1]
            seeds = min(len(runs_a), len(runs_b))
            difference = row_difference(runs_a, runs_b, cache)
            sign = paper_sign(column, a, b)
            percent = bool(runs_a["percent"].iloc[0])
            estimate_a, estimate_b = seed_level(runs_a, cache)[0], seed_level(runs_b, cache)[0]
            plain = None if difference is not None else plain_difference(runs_a, runs_b, estimate_a, estimate_b)[0]
            out.append(
                {
                    "model": model,
                    "samples_seen": budget,
                    "task": task,
                    "column": label,
                    "comparison": name,
                    "ours": f"{shown(estimate_a.value, percent)} vs "
                    + shown(estimate_b.value if plain is None else estimate_a.value - plain, percent),
                    "seeds": f"{len(runs_a)} / {len(runs_b)}",
                    "difference": _difference_text(difference, plain, percent),
                    "p_value": None if difference is None or difference.p_value is None else difference.p_value,
                    "paper": _paper_text(column, a, b),
                    "verdict": verdict(difference, seeds, sign),
                }
            )
    return out


def _difference_text(difference: Any, plain: Optional[float], percent: bool) -> str:
    """The seed-level difference with its interval, or the plain one (``report.rows.plain_difference``: against the
    same seed's run where there is one) without a test."""
    if difference is None:
        return f"{shown(plain, percent, sign=True)} (no test: one seed)"
    low, high = difference.interval
    return (
        f"{shown(difference.value, percent, sign=True)} [{shown(low, percent, sign=True)}, "
        f"{shown(high, percent, sign=True)}]"
    )


def paper_markdown(long: pd.DataFrame) -> str:
    """The page: for each data set and model family of the per-run ``long`` table (after
    ``report.tables.separate_data_versions``), one line per comparison."""
    lines = [
        "# Verdicts against the paper",
        "",
        f"Source of the paper's values: {SOURCE}. Rebuilt by `python -m evals.tables` from `results/records`; the",
        "definitions are in `report/verdicts.py`. A verdict needs every row of the comparison to have at least",
        f"{MIN_SEEDS} training seeds and a seed-level test (evals.results.seeds) with p < {SIGNIFICANCE}: reproduced (the",
        "paper's direction), opposite, or not resolved. Differences in % for fractions, in their own unit otherwise, with",
        "their seed-level 95% interval; 'seeds' = seeds of the two rows. The paper's values are its Table 3 (retrieval:",
        "COCO I->T, COCO T->I, F30K I->T, F30K T->I R@1; zero-shot: ImageNet-1K top-1) and Table 7.",
        "",
    ]
    for (data, family), rows in long.groupby(["data", "family"]):
        clip = family == "clip"
        unscored: set = set()
        found = comparisons(row_groups(rows), CLIP_COLUMNS if clip else T2I_COLUMNS, clip, unscored)
        if not found:
            continue
        title = "CLIP (Table 3 in shape)" if clip else "text-to-image DiT (Table 7 in shape)"
        lines += [f"## {data}: {title}", ""]
        table = pd.DataFrame(found)
        table["p_value"] = [("n/a" if missing(v) else f"{v:.3f}") for v in table["p_value"]]
        lines += [table.to_markdown(index=False), ""]
        tally = table["verdict"].map(lambda v: v if v in ("reproduced", "opposite") else "not resolved").value_counts()
        lines += [
            "Tally: " + ", ".join(f"{tally.get(k, 0)} {k}" for k in ("reproduced", "opposite", "not resolved")) + ".",
            "",
        ]
        if unscored:
            lines += [f"Not scored (no value in the records): {', '.join(sorted(unscored))}.", ""]
    return "\n".join(lines).rstrip() + "\n"
