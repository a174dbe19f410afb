"""training.checkpoint: RNG capture, atomic weights-only checkpoints, resume resolution, and a SIGKILL'd
run that resumes to bitwise-identical final weights.

Run as a script (``python tests/test_train_clip_checkpoint.py OUT_DIR [THROTTLE_S]``) it trains the
micro model on synthetic pairs; the kill test uses that to train in subprocesses.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness_infra.atomic import atomic_torch_save  # noqa: E402
from harness_infra.errors import ConfigError  # noqa: E402
from training import checkpoint as ckpt  # noqa: E402

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ckpt.capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    path = str(tmp_path / "rng.pt")
    atomic_torch_save({"rng": state}, path)
    ckpt.restore_rng(torch.load(path, weights_only=True)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


class Payload:
    """Not a tensor, dict or number: a weights-only unpickler must refuse it."""


def test_a_plain_torch_load_refuses_arbitrary_objects(tmp_path, monkeypatch):
    """Our code passes weights_only=True everywhere; third-party calls that do not (CLIP_benchmark's load_clfs and
    linear-probe feature cache, not on our paths) are safe only because torch >= 2.6 (pyproject's floor) defaults to
    weights_only=True. Guard that default: torch.load without a choice (weights_only=None) of a pickled object fails."""
    import pickle

    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    path = str(tmp_path / "object.pt")
    torch.save({"payload": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path, weights_only=None)  # None: torch's own default, the value this test guards


def test_atomic_save_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "checkpoints" / "step_00000001.pt")
    atomic_torch_save({"format": ckpt.FORMAT_VERSION, "x": torch.ones(2)}, path)
    assert os.listdir(tmp_path / "checkpoints") == ["step_00000001.pt"]
    assert torch.equal(ckpt.load_checkpoint(path)["x"], torch.ones(2))


def test_resume_resolution(tmp_path):
    out = str(tmp_path)
    assert ckpt.resolve_resume(None, out) is None and ckpt.resolve_resume("latest", out) is None
    for step in (2, 10, 4):
        atomic_torch_save({"format": ckpt.FORMAT_VERSION}, ckpt.checkpoint_path(out, step))
    (tmp_path / "checkpoints" / "step_00000012.pt.tmp-99").write_bytes(b"half written")
    assert ckpt.resolve_resume("latest", out).endswith("step_00000010.pt")
    with pytest.raises(ConfigError, match="train.resume"):
        ckpt.resolve_resume(None, out)
    with pytest.raises(ConfigError, match="train.resume"):
        ckpt.resolve_resume(str(tmp_path / "missing.pt"), out)
    ckpt.prune_checkpoints(out, keep=1)
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(out)] == ["step_00000010.pt"]


def run_micro(out_dir: str, throttle_s: float = 0.0):
    """Train the micro model through two stages (32 px, then 48 px) on synthetic pairs, checkpointing every 2 steps."""
    from train_helpers import synthetic_factory

    from train_clip.config import ClipModelConfig, StageConfig, TrainConfig
    from train_clip.train import train

    model_cfg = ClipModelConfig(name="TestCLIP-micro", inline=MICRO)
    train_cfg = TrainConfig(
        stages=[
            StageConfig(image_size=32, samples=96, batch_size=16, lr=1e-3, warmup_steps=2),
            StageConfig(image_size=48, samples=32, batch_size=16, lr=1e-4),
        ],
        threads=1,
        deterministic=True,
        checkpoint_every_steps=2,
        keep_checkpoints=2,
        resume="latest",
        log_every=1,
        progress_bar=False,
        tensorboard=False,
    )
    factory = synthetic_factory(64, seed=0)

    def slow_factory(request):
        """The synthetic source, sleeping before each batch (so a test can kill the run mid-training)."""
        source = factory(request)
        iterate = source.iterate

        def throttled(skip_batches: int = 0):
            for item in iterate(skip_batches):
                time.sleep(throttle_s)
                yield item

        source.iterate = throttled
        return source

    return train(model_cfg, train_cfg, None, None, out_dir, loader_factory=slow_factory if throttle_s else factory)


def launch(out_dir: Path, throttle_s: float = 0.0) -> subprocess.Popen:
    """Start a micro run in a fresh Python process."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, __file__, str(out_dir), str(throttle_s)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def final_weights(out_dir: Path) -> dict:
    """The exported state dict of a finished run."""
    return load_file(out_dir / "export" / "open_clip_model.safetensors")


def test_sigkilled_run_resumes_to_bitwise_identical_weights(tmp_path):
    victim = launch(tmp_path / "victim", throttle_s=0.3)
    run_micro(str(tmp_path / "reference"))  # uninterrupted, in this process, while the victim starts
    deadline = time.time() + 120
    while not ckpt.list_checkpoints(str(tmp_path / "victim")):
        assert victim.poll() is None, victim.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "victim" / "export").exists(), "the run finished before it was killed"
    killed_at = ckpt.list_checkpoints(str(tmp_path / "victim"))[-1]
    result = run_micro(str(tmp_path / "victim"))  # resume: latest, in this process
    assert result.resumed_from == killed_at
    expected, got = final_weights(tmp_path / "reference"), final_weights(tmp_path / "victim")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), f"resume from {killed_at} diverged"
    steps = [json.loads(line)["step"] for line in (tmp_path / "victim" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 8


if __name__ == "__main__":
    run_micro(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
