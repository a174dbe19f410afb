"""AdamW with open_clip's weight-decay split, and a warm-up + cosine (or constant) learning-rate schedule."""

from __future__ import annotations

import math
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
    return all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)


def build_optimizer(model: torch.nn.Module, train_cfg: TrainConfig, stage: StageConfig) -> torch.optim.AdamW:
    """AdamW over ``model`` with the stage's peak learning rate (fused kernel where available)."""
    return torch.optim.AdamW(
        param_groups(model, train_cfg.weight_decay),
        lr=stage.lr,
        betas=(float(train_cfg.betas[0]), float(train_cfg.betas[1])),
        eps=train_cfg.eps,
        fused=fused_ok(model) or None,
    )


class LRSchedule:
    """Linear warm-up to ``base_lr`` then cosine decay to 0 (``cosine``) or a constant (``const``); a pure function of step."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup_steps: int, total_steps: int, kind: str = "cosine") -> None:
        self.optimizer, self.base_lr, self.kind = optimizer, base_lr, kind
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.last_step = -1

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based), as open_clip's cosine_lr."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "const":
            return self.base_lr
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * (step - self.warmup_steps) / decay_steps)) * self.base_lr

    def set_step(self, step: int) -> float:
        """Set every group's learning rate for ``step``; returns it."""
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.last_step = step
        return lr

    def state_dict(self) -> Dict[str, object]:
        """Primitive state for the checkpoint."""
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "kind": self.kind, "last_step": self.last_step}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore from ``state_dict`` output."""
        self.base_lr = float(state["base_lr"])
        self.warmup_steps, self.total_steps = int(state["warmup_steps"]), int(state["total_steps"])
        self.kind, self.last_step = str(state["kind"]), int(state["last_step"])
