"""Stop a diverged run before it corrupts the weights: a non-finite loss ends training at that step, unpublished.

The check runs between backward and the optimizer step, so the weights (and the newest checkpoint on disk) are the
last good ones. Under DDP every rank must stop at the same step or the others hang in the next collective: the
"loss is finite" flag is all-reduced (MIN of one int per step, negligible next to the gradient all-reduce).
"""

from __future__ import annotations

import torch

from harness_infra.errors import BrokenModelError
from training.distributed import DistEnv


def check_finite_loss(loss: torch.Tensor, env: DistEnv, step: int, last_checkpoint: str) -> None:
    """Raise BrokenModelError naming ``step`` and the last good checkpoint unless ``loss`` is finite on every rank.

    ``loss``: the detached scalar loss of the step (any device); ``step``: the 1-based global step being taken.
    """
    finite = torch.isfinite(loss.detach()).all().to(torch.int32).reshape(1)
    if env.distributed:
        finite = finite.to(env.device)
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if int(finite.item()) == 0:
        value = float(loss.detach().float().cpu()) if loss.numel() == 1 else float("nan")
        raise BrokenModelError(
            f"training diverged: the loss is {value} at step {step} (on some rank); the weights were not "
            f"updated and nothing was exported; last good checkpoint: {last_checkpoint or 'none saved yet'}; "
            "lower the learning rate, clip gradients (train.grad_clip_norm) or check the data"
        )


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    """Raise BrokenModelError when any parameter or buffer of ``model`` holds NaN or inf (``what`` names it)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BrokenModelError(f"{what}: tensor {name} holds NaN or infinite values; not exported")
