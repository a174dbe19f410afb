"""The DiT family across processes: kill -9 and resume is bitwise, 2-process gloo DDP equals one process, and the
runner walks data -> features -> train -> sample and resumes a killed run (slow: real subprocesses)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from train_dit.config import DitModelConfig

sys.path.insert(0, os.path.dirname(__file__))
from test_train_dit_core import MICRO, checkpoint, colour_factory, recipe  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from test_train_dit_core import MICRO, ColourBatches, recipe
from train_dit.config import DitModelConfig
from train_dit.train import train

def slow(session):
    source = ColourBatches(48, session.train_cfg.batch_size, session.env.rank, session.env.world_size)
    inner = source.iterate
    def iterate(skip_batches=0):
        for batch in inner(skip_batches):
            time.sleep({delay})
            yield batch
    source.iterate = iterate
    return source

train(DitModelConfig(**MICRO), recipe(samples={samples}, batch_size={batch}, checkpoint_every_steps=2, keep_checkpoints=10,
      dist_backend="gloo"), None, None, {out!r}, source_factory=slow)
"""


def run_script(tmp_path, name, out, samples, batch, delay, env=None):
    """Start the training script in a subprocess."""
    path = tmp_path / f"{name}.py"
    path.write_text(
        SCRIPT.format(tests=os.path.dirname(__file__), delay=delay, samples=samples, batch=batch, out=str(out))
    )
    return subprocess.Popen(
        [sys.executable, str(path)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(path, process, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_then_resume_gives_bitwise_equal_weights_and_ema(tmp_path):
    model = DitModelConfig(**MICRO)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train_fn = __import__("train_dit.train", fromlist=["train"]).train
    train_fn(
        model,
        recipe(samples=16 * 12, checkpoint_every_steps=2, keep_checkpoints=10),
        None,
        None,
        str(straight),
        source_factory=colour_factory(48),
    )
    process = run_script(tmp_path, "victim", killed, 16 * 12, 16, delay=0.3)
    wait_for(str(killed / "checkpoints" / "step_00000004.pt"), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not os.path.exists(killed / "checkpoints" / "step_00000012.pt")
    train_fn(
        model,
        recipe(samples=16 * 12, checkpoint_every_steps=2, keep_checkpoints=10),
        None,
        None,
        str(killed),
        source_factory=colour_factory(48),
    )
    a, b = checkpoint(str(straight), 12), checkpoint(str(killed), 12)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]))
    assert a["ema"]["optimization_step"] == b["ema"]["optimization_step"] == 12
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)


@pytest.mark.slow
def test_two_process_gloo_ddp_equals_one_process(tmp_path):
    """2 ranks x batch 8 see the same 16 samples per step as 1 process x batch 16, with the same per-sample noise."""
    from train_dit.train import train

    single = tmp_path / "single"
    train(
        DitModelConfig(**MICRO),
        recipe(samples=16 * 3, batch_size=16, checkpoint_every_steps=2, keep_checkpoints=10),
        None,
        None,
        str(single),
        source_factory=colour_factory(48),
    )
    ddp = tmp_path / "ddp"
    port = str(29500 + os.getpid() % 1000)
    processes = [
        run_script(
            tmp_path,
            f"rank{r}",
            ddp,
            16 * 3,
            8,
            delay=0.0,
            env={
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
        )
        for r in range(2)
    ]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read().decode()[-2000:]
    a, b = checkpoint(str(single), 3), checkpoint(str(ddp), 3)
    assert b["world_size"] == 2 and a["position"]["samples_seen"] == b["position"]["samples_seen"] == 48
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-4, atol=2e-6)
    for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=2e-6)


@pytest.mark.slow
def test_the_runner_walks_data_features_train_sample_and_resumes_a_killed_run(tmp_path):
    out = tmp_path / "runs"
    command = [
        sys.executable,
        "-m",
        "evals.run",
        "+experiment=dit_smoke",
        f"run.out_root={out}",
        f"run.results_dir={tmp_path / 'results'}",
        "train.samples=480",
        "train.checkpoint_every_steps=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECAP_TRACEBACK": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not glob.glob(str(out / "train" / "*" / "checkpoints" / "step_*.pt")):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr and "features: complete" in done.stderr
    (sample_dir,) = [path for path in glob.glob(str(out / "sample" / "dit_smoke_p0.5-*")) if os.path.isdir(path)]
    with open(os.path.join(sample_dir, "prompts.jsonl"), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert [r["seed"] for r in rows] == [0, 1] and all(
        r["sampler"] == "dpm++" and r["guidance_scale"] == 10.0 for r in rows
    )
    assert os.path.isfile(os.path.join(sample_dir, "grid.png")) and os.path.isfile(
        os.path.join(sample_dir, "images", "00001.png")
    )
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr.count("skipped") >= 4
