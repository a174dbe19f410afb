"""Sweeps go through Hydra's own multirun machinery and its launcher plugins: a 2-job sweep over p with
``hydra/launcher=submitit_local`` (each job a submitit subprocess) and ``hydra/launcher=joblib`` (loky workers), the
two jobs running side by side and sharing one data stage, which exactly one of them builds."""

from __future__ import annotations

import glob
import json
import os

import pytest

from pipeline.cli import main

TINY = [
    "+experiment=clip_smoke",
    "data.build_size=200",
    "train.stages.0.samples=64",
    "train.stages.0.batch_size=32",
    "eval.tasks.0.max_samples=60",
    "eval.tasks.1.max_samples=60",
    "eval.bootstrap_samples=20",
    "eval.permutation_samples=50",
]


def job_logs(root: str, launcher: str) -> str:
    """Every job's log text: submitit's per-job stderr files, or Hydra's per-job log files (joblib)."""
    pattern = (
        "runs/hydra/multirun/*/.submitit/*/*_log.err"
        if launcher == "submitit_local"
        else "runs/hydra/multirun/*/*/*.log"
    )
    return "".join(open(path).read() for path in glob.glob(os.path.join(root, pattern)))


@pytest.mark.parametrize("launcher", ["submitit_local", "joblib"])
def test_a_sweep_over_p_runs_through_a_hydra_launcher(tmp_path, launcher, capsys):
    root = str(tmp_path)
    argv = [
        "-m",
        *TINY,
        "mix.p=0,1",
        f"hydra/launcher={launcher}",
        f"run.out_root={root}/runs",
        f"run.results_dir={root}/results",
    ]
    assert main(argv) == 0
    records = [json.load(open(path)) for path in glob.glob(f"{root}/results/records/*.json")]
    assert sorted({r["run"]["p"] for r in records}) == [0.0, 1.0] and len(records) == 6  # 2 p x 3 tasks
    assert {r["run"]["command"] for r in records} == {
        f"python -m evals.run {' '.join(TINY)} mix.p={p} run.out_root={root}/runs run.results_dir={root}/results"
        for p in (0, 1)
    }
    logs = job_logs(root, launcher)
    assert (
        logs.count("] data: running in") == 1 and logs.count("] data: complete in") == 1
    )  # one job built, the other waited
    rows = [
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in open(f"{root}/results/scenes.md")
        if line.startswith("| RecapCLIP")
    ]
    assert sorted((row[1], row[2], row[3]) for row in rows) == [
        ("mix", "full", "0"),
        ("mix", "full", "1"),
    ]  # both jobs' runs (strategy, reduction, p), none lost to a race


def test_torchrun_ranks_share_one_run_directory_and_rank0_builds(tmp_path):
    """Two torchrun ranks (gloo on CPU): one Hydra run directory for both (from torchrun's run id, not a timestamp
    each rank resolves), ``.hydra/`` written once, the shards built once, one set of records published."""
    import subprocess
    import sys

    root = str(tmp_path)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "evals.run",
        *TINY,
        "train.stages.0.batch_size=16",
        "train.device=cpu",
        "data.resampled=true",
        "data.epoch_samples=128",
        f"run.out_root={root}/runs",
        f"run.results_dir={root}/results",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dirs = glob.glob(f"{root}/runs/hydra/clip_smoke_p0.5/*")
    assert (
        len(run_dirs) == 1
        and os.path.basename(run_dirs[0]).startswith("torchrun-")
        and os.path.isdir(f"{run_dirs[0]}/.hydra")
    )
    assert done.stderr.count("] data: running in") == 1 and "(= 16 x 2 ranks x 1 accum)" in done.stderr
    assert len(glob.glob(f"{root}/results/records/*.json")) == 3 and done.stdout.count("table: ") == 1
