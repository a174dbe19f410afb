"""Mixed precision for a training step: the autocast context and GradScaler of ``train.precision``.

``auto`` = bf16 autocast on CUDA, fp32 on CPU; ``bf16``/``amp_bf16`` = bf16 autocast (open_clip_train's
``amp_bf16``); ``amp``/``fp16`` = fp16 autocast with a GradScaler (CUDA only).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional, Tuple

import torch

from harness_infra.errors import ConfigError


def precision_context(
    precision: str, device: torch.device
) -> Tuple[Callable[[], ContextManager], Optional[torch.amp.GradScaler]]:
    """Autocast factory and GradScaler for ``train.precision`` (auto = bf16 on CUDA, fp32 on CPU)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext, None
    if precision in ("bf16", "amp_bf16"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16), None
    if device.type != "cuda":
        raise ConfigError(
            f"train.precision={precision} (fp16 autocast + GradScaler) needs CUDA; use bf16 or fp32 on {device.type}"
        )
    return lambda: torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
