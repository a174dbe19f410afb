"""Exactly once under kill -9: the stage is killed at three random points and resumed each time; every input key ends up
in the output exactly once, none lost or duplicated, with the captions of an uninterrupted run (greedy decoding)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from recaption_helpers import captions, members, write_input

SCRIPT = """
import sys
from captiondata.config import project_layout
from recaption.config import RecaptionConfig
from recaption.stage import recaption_data
cfg = RecaptionConfig(name="llava", backend="hf", model=sys.argv[1], max_new_tokens=6, batch_size=2, num_workers=1)
recaption_data({"train": sys.argv[2]}, sys.argv[3], cfg, project_layout(), 10 ** 8)
print("finished", flush=True)
"""


def run(model: str, spec: str, out: str) -> subprocess.Popen:
    """The stage in a child process (its log on stderr: one line per finished shard)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, model, spec, out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finished_shards(out: str) -> int:
    """Output shards whose completion file exists."""
    return sum(name.endswith(".done.json") for name in os.listdir(out)) if os.path.isdir(out) else 0


def test_kill_minus_9_at_three_random_points_then_resume_gives_exactly_once(tmp_path, tiny_vlm):
    spec = write_input(str(tmp_path / "in"), 24, per_shard=3)  # 8 shards
    reference = str(tmp_path / "reference")
    assert run(tiny_vlm, spec, reference).wait(timeout=300) == 0
    rng = random.Random(7)
    out = str(tmp_path / "killed")
    kills = 0
    for target in sorted(
        rng.sample(range(1, 8), 3)
    ):  # kill once at least `target` shards are done, plus a random delay
        child = run(tiny_vlm, spec, out)
        deadline = time.monotonic() + 240
        while finished_shards(out) < target and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait(timeout=60)
    assert kills >= 2  # the kill points landed while work remained (8 shards, at most 7 done)
    final = run(tiny_vlm, spec, out)
    assert final.wait(timeout=300) == 0
    got, want = members(f"{out}/train-*.tar"), members(f"{reference}/train-*.tar")
    assert (
        sorted(got) == sorted(members(spec)) == sorted(want)
    )  # every input key once (members() asserts no duplicate member)
    assert captions(f"{out}/train-*.tar") == captions(f"{reference}/train-*.tar")
    assert all(
        {k: v for k, v in got[key].items() if k != "llava.json"}
        == {k: v for k, v in want[key].items() if k != "llava.json"}
        for key in want
    )
    assert [
        name for name in os.listdir(out) if name.startswith(".tmp-")
    ] == []  # a killed run's partial files are cleared on resume
