"""The learning-rate schedule of both trainers: linear warm-up, then cosine decay to 0 (open_clip's ``cosine_lr``) or
a constant (the DiT recipe: constant lr, no warm-up)."""

from __future__ import annotations

import math
from typing import Dict

import torch


class LRSchedule:
    """Linear warm-up to ``base_lr`` then cosine decay to 0 (``cosine``) or a constant (``const``); a pure function of step."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        warmup_steps: int,
        total_steps: int,
        kind: str = "cosine",
    ) -> None:
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
        return {
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "kind": self.kind,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore from ``state_dict`` output."""
        self.base_lr = float(state["base_lr"])
        self.warmup_steps, self.total_steps = int(state["warmup_steps"]), int(state["total_steps"])
        self.kind, self.last_step = str(state["kind"]), int(state["last_step"])
