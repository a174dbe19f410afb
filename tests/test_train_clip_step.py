"""train_clip.step and train_clip.optim: loss against a naive reference, exact accumulation, AdamW groups, schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import train_clip  # noqa: F401
from harness_infra.errors import ConfigError
from train_clip.config import ClipModelConfig, StageConfig, TrainConfig
from train_clip.models import create_clip, register_inline
from train_clip.optim import build_optimizer, no_weight_decay, param_groups
from train_clip.step import StepContext, compute_gradients, encode, make_loss, train_step
from training.distributed import DistEnv
from training.precision import precision_context
from training.schedule import LRSchedule

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CPU = torch.device("cpu")


@pytest.fixture
def model(tmp_path):
    """A freshly initialised micro CLIP in float64 (so comparisons test the algorithm, not rounding)."""
    cfg = ClipModelConfig(name="TestCLIP-micro", inline=MICRO)
    register_inline(cfg, str(tmp_path))
    return create_clip(cfg, 32, CPU, seed=0).double()


def batch(n: int, seed: int = 0) -> dict:
    """A random batch of images and tokens."""
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64),
        "text": torch.randint(1, 49000, (n, 16), generator=g),
    }


def context(model: torch.nn.Module) -> StepContext:
    """A single-process step context with plain fp32/fp64 math."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    autocast, scaler = precision_context("fp32", CPU)
    return StepContext(model, make_loss(DistEnv(), True, True), optimizer, autocast, scaler, None)


def naive_clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE written out: mean of image->text and text->image cross-entropy, targets on the diagonal."""
    logits = scale * image @ text.T
    targets = torch.arange(len(image))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def grads(model: torch.nn.Module) -> dict:
    """Copies of all gradients by parameter name."""
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_loss_matches_the_naive_reference(model):
    data = batch(6)
    loss = compute_gradients(context(model), [data])
    with torch.no_grad():
        out = encode(model, data)
    assert torch.allclose(loss, naive_clip_loss(out["image_features"], out["text_features"], out["logit_scale"]))


@pytest.mark.parametrize("accum", [2, 3])
def test_accumulation_gives_the_full_batch_loss_and_gradient(model, accum):
    full = batch(12, seed=1)
    ctx = context(model)
    loss_full = compute_gradients(ctx, [full])
    expected = grads(model)
    micro = [{k: v.chunk(accum)[i] for k, v in full.items()} for i in range(accum)]
    loss_accum = compute_gradients(ctx, micro)
    got = grads(model)
    assert torch.allclose(loss_accum, loss_full, atol=1e-10)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-9, rtol=1e-7), name
    assert torch.allclose(got["logit_scale"], expected["logit_scale"])  # counted once, not accum times


def test_step_clamps_the_logit_scale(model):
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    ctx = context(model)
    train_step(ctx, [batch(4)])
    assert model.logit_scale.item() <= math.log(100) + 1e-9


def test_no_weight_decay_on_gains_biases_norms_and_logit_scale(model):
    decay_free, decayed = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    free_names = {names[id(p)] for p in decay_free["params"]}
    assert {"logit_scale", "visual.class_embedding", "ln_final.weight", "visual.conv1.weight"} & free_names == {
        "logit_scale",
        "visual.class_embedding",
        "ln_final.weight",
    }
    assert all(p.ndim >= 2 for p in decayed["params"]) and decayed["weight_decay"] == 0.2
    assert len(decay_free["params"]) + len(decayed["params"]) == len(list(model.parameters()))
    assert no_weight_decay("text_projection", torch.zeros(3)) and not no_weight_decay(
        "token_embedding.weight", torch.zeros(3, 3)
    )


def test_optimizer_is_adamw_with_the_configured_hyperparameters(model):
    optimizer = build_optimizer(model.float(), TrainConfig(betas=[0.8, 0.9], eps=1e-7), StageConfig(lr=3e-4))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(g["betas"] == (0.8, 0.9) and g["eps"] == 1e-7 and g["lr"] == 3e-4 for g in optimizer.param_groups)


def test_schedule_warms_up_linearly_then_follows_a_cosine(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    cosine = LRSchedule(optimizer, 1.0, warmup_steps=4, total_steps=14)
    assert [cosine.lr_at(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine.lr_at(9) == pytest.approx(0.5)
    assert cosine.lr_at(13) < 0.03
    assert cosine.set_step(9) == optimizer.param_groups[0]["lr"]
    const = LRSchedule(optimizer, 1.0, warmup_steps=2, total_steps=10, kind="const")
    assert const.lr_at(9) == 1.0
    restored = LRSchedule(optimizer, 0.0, 0, 1)
    restored.load_state_dict(cosine.state_dict())
    assert restored.lr_at(9) == cosine.lr_at(9)


def test_precision_choices_on_cpu():
    autocast, scaler = precision_context("auto", CPU)
    with autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert scaler is None
    autocast, _ = precision_context("bf16", CPU)
    with autocast():
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ConfigError, match="train.precision"):
        precision_context("amp", CPU)
