"""What the tables and plots say beside their numbers: chance, the evaluator, FID's sample sizes; tasks with no values
get no plot; sample grids show whole captions."""

from __future__ import annotations

import os
import textwrap

import numpy as np
from PIL import Image

from evals.results.bootstrap import QueryValues
from evals.results.records import write_record
from report.tables import measured_by, write_tables
from train_dit.sample import sample_grid


def record(task: str, name: str, p: float, metrics: dict, n: dict, extra: dict, per_query: bool = True) -> dict:
    return {
        "task": task,
        "task_name": name,
        "dataset": {"fingerprint": "d" * 8},
        "metrics": metrics,
        "intervals": {m: [v - 0.01, v + 0.01] if v == v else [None, None] for m, v in metrics.items()},
        "n": n,
        "extra": extra,
        "created": "2026-01-01T00:00:00+00:00",
        "checkpoint": f"m{p}",
        "run": {
            "experiment": f"m{p}",
            "p": p,
            "strategy": "mix",
            "model": "tiny",
            "data": "toy",
            "samples_seen": 100,
            "global_batch": [10],
            "train_hash": f"m{p}",
            "eval_hash": "e",
            "command": f"python -m evals.run +experiment=m mix.p={p}",
        },
    }


def publish(folder, rec, values=None):
    write_record(
        rec, os.path.join(folder, "records"), values or {}, stem=f"{rec['run']['train_hash']}_{rec['task_name']}"
    )


def test_measurement_notes_name_chance_the_evaluator_and_fids_sample_sizes():
    zeroshot = record("zeroshot_classification", "zs", 1.0, {"top1": 0.1}, {"classes": 36, "images": 360}, {})
    assert measured_by(zeroshot) == "chance 2.8% (1/36 classes)"
    clip = record("clip_score", "cs", 1.0, {"clip_score": 20.0}, {"generated": 9}, {"evaluator": "harness CLIP x-1"})
    assert measured_by(clip) == "evaluator harness CLIP x-1"
    clip["extra"].update(
        evaluator_swap_preference={"preferred": 0.931, "images": 500}, evaluator_flickr8k_expert={"tau_c": 3.26}
    )
    assert measured_by(clip) == (
        "evaluator harness CLIP x-1, prefers the true prompt over its swapped partner's on 93.1% of 500 real renders, "
        "Kendall tau-c 3.3 with Flickr8k-Expert"
    )
    following = record(
        "prompt_following", "pf", 1.0, {}, {}, {"recognizer_real_overall": {"value": 0.916, "images": 500}}
    )
    following["extra"]["recognizer_swap_preference"] = {"preferred": 0.95, "images": 500}
    assert measured_by(following) == (
        "recognizer: exact scene match on 91.6% of 500 real renders, prefers the true prompt over its swapped "
        "partner's on 95.0%"
    )
    fid = record("fid", "fid", 1.0, {"fid": 40.0}, {"generated": 500, "reference": 400}, {"reference_size": [32, 32]})
    assert measured_by(fid) == "N = 500 generated vs 400 references at 32x32 px"
    assert measured_by(record("retrieval", "r", 1.0, {}, {}, {})) is None


def test_tables_print_the_notes_and_skip_plots_of_tasks_with_no_values(tmp_path):
    folder = str(tmp_path)
    rng = np.random.default_rng(0)
    for p in (0.0, 1.0):
        hits = rng.random(360) < 0.2
        zs = record(
            "zeroshot_classification",
            "zs",
            p,
            {m: hits.mean() for m in ("top1", "top5", "mean_per_class_recall")},
            {"classes": 36, "images": 360},
            {},
        )
        publish(folder, zs, {m: QueryValues(hits.astype(float)) for m in ("top1", "top5", "mean_per_class_recall")})
        judge = record("vlm_judge", "judge", p, {"judge_rating": float("nan")}, {}, {})
        publish(folder, judge)
    write_tables(folder)
    table = open(tmp_path / "toy.md").read()
    assert "Measured with (zs): chance 2.8% (1/36 classes)." in table
    assert os.path.isfile(tmp_path / "toy_zs.png")
    assert not any("judge" in name for name in os.listdir(tmp_path) if name.endswith(".png"))


def test_sample_grid_rows_hold_the_whole_caption_or_end_in_an_ellipsis():
    caption = "A small purple dotted circle on the left and a small green striped triangle at the top right, " * 2
    lines = len(textwrap.wrap(caption, 128 // 6))
    assert lines > 5
    images = [Image.new("RGB", (32, 32), "red")] * 2
    grid = sample_grid(images, [caption, "short"], columns=2)
    assert grid.size == (2 * (128 + 6), 128 + lines * 11 + 6)
    cut = sample_grid(images, [caption, "short"], columns=2, text_lines=3)
    assert cut.size[1] == 128 + 3 * 11 + 6
