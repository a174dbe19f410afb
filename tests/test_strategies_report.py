"""results/strategies.md and paper.md's inverse-effect lines (report.strategies) from reduced-caption records."""

from __future__ import annotations

import numpy as np
from eval_helpers import publish_retrieval

from report.strategies import reduction_parts
from report.tables import write_tables


def publish(folder: str, reduction: dict, label: str, seed: int, hits: np.ndarray, p: float = 0.0) -> None:
    run = {
        "experiment": label,
        "p": p,
        "strategy": "mix",
        "model": "nano",
        "data": "scenes",
        "train_hash": f"{label}-{seed}",
        "recipe_hash": label,
        "seed": seed,
        "command": f"python -m evals.run +experiment=x train.seed={seed}",
        "reduction": reduction,
        "reduction_label": label if reduction else "full",
    }
    stem = f"{label}_s{seed}".replace(" ", "_").replace("=", "")
    publish_retrieval(folder, hits, stem, run, task_name="scenes_compositional_retrieval")


def test_reduced_rows_are_compared_with_full_and_the_inverse_effect_is_judged(tmp_path):
    rng = np.random.default_rng(5)
    folder = str(tmp_path)
    for seed in range(3):
        base = rng.random(1500) < 0.3
        publish(folder, {}, "full", seed, base)
        publish(folder, {}, "baseline", seed, base, p=1.0)
        publish(
            folder,
            {"recap_reduce": "token_span", "recap_tokens": 8},
            "recap token_span K=8",
            seed,
            base | (rng.random(1500) < 0.2),
        )  # much better: the inverse effect
        publish(folder, {"original_reduce": "truncate", "original_tokens": 4}, "original truncate K=4", seed, base)
    write_tables(folder)
    page = open(tmp_path / "strategies.md").read()
    assert "| recap token_span K=8" in page and "| original truncate K=4" in page
    paper = open(tmp_path / "paper.md").read()
    section = paper[paper.index("## CLIPS's inverse effect") :]
    lines = [line for line in section.splitlines() if "token_span K=8 vs full" in line]
    assert len(lines) == 2 and all(line.rstrip(" |").endswith("reproduced") for line in lines)  # i2t and t2i R@1
    control = [line for line in section.splitlines() if "original truncate K=4 vs full" in line]
    assert control and all("control (CLIPS: no inverse effect for alt-text)" in line for line in control)


def test_reduction_parts_read_the_records_reduction():
    assert reduction_parts({}) == {"source": None, "reduce": "full", "k": None, "positives": 1}
    assert reduction_parts('{"recap_reduce": "sub_caption", "recap_sentences": 2, "positives": 2}') == {
        "source": "recap",
        "reduce": "sub_caption",
        "k": 2,
        "positives": 2,
    }
