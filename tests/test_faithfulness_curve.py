"""results/faithfulness.md (report.faithfulness): gains over the shared p = 1 row against measured precision, and the
break-even precision where the gain crosses zero."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from eval_helpers import publish_retrieval

from report.faithfulness import break_even, captioner_of
from report.tables import write_tables

QUERIES = 2000


def publish(folder: str, label: str, p: float, seed: int, hits: np.ndarray, precision, error) -> None:
    recaption = None
    if error is not None:
        rates = {"attribute_error": error, "invented": 0, "omitted": 0}
        recaption = {"backend": "faithfulness", "model": "scenes-oracle", "faithfulness": rates}
    run = {
        "experiment": label,
        "p": p,
        "strategy": "mix",
        "model": "nano",
        "data": "scenes" if error is None else "scenes_faithful",
        "data_fingerprint": "shards",
        "train_hash": f"{label}-{seed}",
        "recipe_hash": label,
        "seed": seed,
        "command": f"python -m evals.run +experiment=x train.seed={seed}",
        "resolved_config": {"recaption": recaption} if recaption else {},
        "recaption": {"train": {"quality": {"attribute_precision": precision}}} if recaption else None,
    }
    publish_retrieval(folder, hits, f"{label}_s{seed}", run, task_name="scenes_compositional_retrieval")


def test_the_break_even_precision_is_found_where_the_gain_crosses_zero(tmp_path):
    """Gain = 0.5 (precision - 0.4) by construction, 3 seeds of every row: the root is found near 0.4, inside its
    interval; precisions below it lose, above it win."""
    rng = np.random.default_rng(3)
    folder = str(tmp_path)
    base_rate = 0.3
    for seed in range(3):
        offset = rng.normal(0, 0.005)  # training-seed noise shared by a seed's rows
        publish(folder, "p1", 1.0, seed, rng.random(QUERIES) < base_rate + offset, None, None)
        for error in (0.0, 0.3, 0.6, 0.9):
            precision = 1 - error
            rate = base_rate + 0.5 * (precision - 0.4) + offset + rng.normal(0, 0.005)
            hits = rng.random(QUERIES) < rate
            publish(folder, f"e{error}", 0.5, seed, hits, precision if error else 1.0, error if error else None)
    write_tables(folder)
    page = open(tmp_path / "faithfulness.md").read()
    line = next(line for line in page.splitlines() if "i2t_R@1" in line and line.startswith("## "))
    block = page[page.index(line) :].split("## ")[1]
    found = next(line for line in block.splitlines() if line.startswith("- p = 0.5: break-even precision"))
    value, low, high = (
        float(v) for v in found.split("precision ")[1].replace("[", "").replace("]", "").replace(",", "").split()[:3]
    )
    assert low < 0.4 < high and abs(value - 0.4) < 0.08 and high - low < 0.3
    assert "| 0.5 | data set's recaptions" in block and "faithfulness:scenes-oracle (attribute error 0.9" in block


def test_break_even_needs_three_captioners_and_a_clear_slope():
    points = pd.DataFrame({"precision": [0.2, 0.6], "gain": [-0.1, 0.1], "se": [0.01, 0.01], "df": [4, 4]})
    assert break_even(points)["verdict"] == "not resolved (fewer than 3 captioners)"
    flat = pd.DataFrame({"precision": [0.2, 0.5, 0.9], "gain": [0.01, -0.01, 0.0], "se": [0.05] * 3, "df": [4] * 3})
    assert break_even(flat)["verdict"] == "not resolved (no clear slope)"
    line = pd.DataFrame({"precision": [0.2, 0.5, 0.8], "gain": [-0.1, 0.05, 0.2], "se": [0.01] * 3, "df": [10] * 3})
    found = break_even(line)
    assert found["value"] == pytest.approx(0.4, abs=1e-9) and found["low"] < 0.4 < found["high"]


def test_the_captioner_is_named_by_its_backend_and_rates():
    run = {"data": "scenes", "resolved_config": {}}
    assert captioner_of(run) == ("data set's recaptions", 1.0)
    run = {
        "data": "scenes",
        "resolved_config": {"recaption": {"backend": "coca", "model": "local-dir:x"}},
        "recaption": {"train": {"quality": {"attribute_precision": 0.169}}},
    }
    assert captioner_of(run) == ("coca:local-dir:x", 0.169)
