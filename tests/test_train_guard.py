"""A diverged training step stops the run with its step number and keeps the last good checkpoint (issue 14, item 1)."""

from __future__ import annotations

import os

import pytest
import torch

from harness_infra.errors import BrokenModelError
from train_clip.config import ClipModelConfig, StageConfig, TrainConfig
from train_clip.data import InMemoryBatches, synthetic_pairs
from train_clip.train import train
from training import checkpoint as ckpt
from training.distributed import DistEnv
from training.guard import check_finite_loss, check_finite_weights

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class PoisonedBatches(InMemoryBatches):
    """Synthetic pairs whose batch number ``poison`` (0-based, within epoch 0) has NaN pixels."""

    def __init__(self, *args, poison: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.poison = poison

    def iterate(self, skip_batches: int = 0):
        for index, batch in enumerate(super().iterate(skip_batches), start=skip_batches):
            if self.epoch == 0 and index == self.poison:
                batch = {**batch, "image": torch.full_like(batch["image"], float("nan"))}
            yield batch


def poisoned_factory(poison: int):
    def make(request):
        pairs = synthetic_pairs(128, request.image_size, request.tokenize, seed=0)
        return PoisonedBatches(
            pairs["image"],
            pairs["text"],
            request.batch_size,
            request.rank,
            request.world_size,
            seed=request.seed,
            poison=poison,
        )

    return make


def test_nan_loss_at_step_4_stops_the_run_and_keeps_the_step_2_checkpoint(tmp_path):
    cfg = TrainConfig(
        stages=[StageConfig(image_size=32, samples=256, batch_size=16, lr=1e-3)],
        threads=1,
        log_every=1,
        progress_bar=False,
        checkpoint_every_steps=2,
        keep_checkpoints=5,
    )
    with pytest.raises(BrokenModelError, match=r"the loss is nan at step 4 .*last good checkpoint: .*step_0*2"):
        train(
            ClipModelConfig(name="TestCLIP-guard", inline=MICRO),
            cfg,
            None,
            None,
            str(tmp_path),
            loader_factory=poisoned_factory(3),
        )
    saved = sorted(os.listdir(os.path.join(tmp_path, "checkpoints")))
    assert len(saved) == 1 and "2" in saved[0]  # step 2 only: nothing written at or after the diverged step
    payload = ckpt.load_checkpoint(os.path.join(tmp_path, "checkpoints", saved[0]))
    assert all(torch.isfinite(t).all() for t in payload["model"].values() if t.is_floating_point())
    assert not os.path.exists(os.path.join(tmp_path, "export"))


def test_guard_functions_accept_finite_and_refuse_nonfinite():
    check_finite_loss(torch.tensor(1.5), DistEnv(), step=1, last_checkpoint="")
    with pytest.raises(BrokenModelError, match="loss is inf at step 7 .*none saved yet"):
        check_finite_loss(torch.tensor(float("inf")), DistEnv(), step=7, last_checkpoint="")
    layer = torch.nn.Linear(2, 2)
    check_finite_weights(layer, "layer")
    with torch.no_grad():
        layer.bias[1] = float("nan")
    with pytest.raises(BrokenModelError, match="layer: tensor bias holds NaN"):
        check_finite_weights(layer, "layer")
