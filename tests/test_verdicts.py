"""results/paper.md (report.verdicts): verdicts computed from seed-level tests against the paper's directions."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_runner import fixture_record

from report.tables import write_tables
from report.verdicts import CLIP_COLUMNS, T2I_COLUMNS, paper_sign, verdict


def run(folder: str, p, seed: int, hits: np.ndarray, strategy: str = "mix") -> None:
    """A toy retrieval run of recipe ``{strategy}{p}`` at training seed ``seed``."""
    label = f"{strategy}{p}_s{seed}"
    fixture_record(folder, 1.0 if p is None else p, strategy, hits, label)
    path = os.path.join(folder, "records", f"{label}.json")
    record = json.loads(open(path).read())
    record["run"].update(seed=seed, recipe_hash=f"{strategy}{p}", p=p)
    open(path, "w").write(json.dumps(record))


def lines_of(page: str, comparison: str) -> list:
    return [line for line in page.splitlines() if f"| {comparison}" in line and "retrieval i2t R@1" in line]


def test_verdicts_follow_the_seed_level_test_and_the_papers_direction(tmp_path):
    rng = np.random.default_rng(11)
    folder = str(tmp_path)
    for seed in (0, 1, 2):
        base = rng.random(500) < 0.2 + 0.01 * seed
        run(folder, 1.0, seed, base)
        run(folder, 0.5, seed, base | (rng.random(500) < 0.3))  # much better: the paper's direction
        run(folder, 0.0, seed, base | (rng.random(500) < 0.3))  # much better: the paper's p = 0 is worse
        run(folder, 0.8, seed, base)  # the same hits as p = 1: no difference
        run(folder, None, seed, base, strategy="concat")  # concat = p = 1 < the best mixture (0.5): as the paper
    run(folder, 0.2, 0, base | (rng.random(500) < 0.05))  # one seed, below p = 0.5
    write_tables(folder)
    page = open(tmp_path / "paper.md").read()
    assert lines_of(page, "p = 0.5 vs p = 1")[0].rstrip(" |").endswith("reproduced")
    assert lines_of(page, "p = 0 vs p = 1")[0].rstrip(" |").endswith("opposite")
    assert "not resolved at 3 seeds (no seed-level difference)" in lines_of(page, "p = 0.8 vs p = 1")[0]
    assert "not resolved at 1 seed (a verdict needs 3)" in lines_of(page, "p = 0.2 vs p = 1")[0]
    concat = lines_of(page, "concat vs the best mixture (p = 0.5")[0]
    assert concat.rstrip(" |").endswith("reproduced") and "3 / 3" in concat
    # i2t and t2i R@1: p = 0.5 and concat reproduced, p = 0 opposite, p = 0.8 and the one-seed p = 0.2 not resolved
    assert "Tally: 4 reproduced, 2 opposite, 4 not resolved." in page
    # rebuilt unchanged from the same records
    write_tables(folder)
    assert open(tmp_path / "paper.md").read() == page


def test_the_papers_direction_is_the_sign_of_its_own_difference():
    retrieval, zeroshot = CLIP_COLUMNS[0], CLIP_COLUMNS[2]
    assert paper_sign(retrieval, 0.5, 1.0) == 1 and paper_sign(retrieval, 0.0, 1.0) == -1
    assert paper_sign(zeroshot, 0.8, 1.0) == -1 and paper_sign(zeroshot, "concat", 0.8) == -1
    raw_fid, recap_fid = T2I_COLUMNS[0], T2I_COLUMNS[2]
    assert paper_sign(raw_fid, 0.75, 1.0) == -1 and paper_sign(raw_fid, 0.0, 1.0) == 1  # 31.3 < 32.5 < 37.6
    assert paper_sign(recap_fid, 0.0, 1.0) == -1
    assert paper_sign(retrieval, 0.3, 1.0) is None  # the paper has no p = 0.3


@pytest.mark.parametrize(
    "p_value,value,seeds,sign,expected",
    [
        (0.01, 0.2, 3, 1, "reproduced"),
        (0.01, -0.2, 3, 1, "opposite"),
        (0.2, 0.2, 3, 1, "not resolved at 3 seeds (no seed-level difference)"),
        (0.01, 0.2, 2, 1, "not resolved at 2 seeds (a verdict needs 3)"),
    ],
)
def test_verdict_rules(p_value, value, seeds, sign, expected):
    class Difference:
        pass

    difference = Difference()
    difference.p_value, difference.value = p_value, value
    assert verdict(difference, seeds, sign) == expected
