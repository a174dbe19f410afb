"""AdamW with open_clip's weight-decay split (the schedule is ``training.schedule.LRSchedule``)."""

from __future__ import annotations

from typing import Dict, List

import torch

from train_clip.config import StageConfig, TrainConfig


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """open_clip's rule: no decay on gains, biases, norms, logit scale and other <2-D parameters."""
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def param_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict]:
    """Two AdamW groups: decayed weights and undecayed gains/biases (trainable parameters only)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if no_weight_decay(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not no_weight_decay(n, p)], "weight_decay": weight_decay},
    ]


def fused_ok(model: torch.nn.Module) -> bool:
    """True when torch's fused AdamW kernel applies (floating parameters on CPU or CUDA).

    On CPU the fused kernel is ~10x faster than the default per-tensor loop (measured: 14 vs 150 ms a step for
    RecapCLIP-tiny), which is most of this trainer's lead over open_clip_train on small models.
    """
    params = list(model.parameters())
    return all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params
    )


def build_optimizer(model: torch.nn.Module, train_cfg: TrainConfig, stage: StageConfig) -> torch.optim.AdamW:
    """AdamW over ``model`` with the stage's peak learning rate (fused kernel where available)."""
    return torch.optim.AdamW(
        param_groups(model, train_cfg.weight_decay),
        lr=stage.lr,
        betas=(float(train_cfg.betas[0]), float(train_cfg.betas[1])),
        eps=train_cfg.eps,
        fused=fused_ok(model) or None,
    )
