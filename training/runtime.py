"""The process settings of a training run: torch threads, denormal flushing, deterministic kernels; restored after.

Flushing denormals to zero (CPU) avoids multi-second first steps: early AdamW second moments and rarely updated
weights' gradients are denormal floats, which x86 handles in slow microcode. ``deterministic`` turns on
``torch.use_deterministic_algorithms`` (bitwise-reproducible resume on CPU).
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator, Optional

import numpy as np
import torch


@contextlib.contextmanager
def runtime(threads: Optional[int], deterministic: bool) -> Iterator[None]:
    """Thread count, denormal flushing and deterministic kernels for the run; the previous settings come back after."""
    previous_threads, previous_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
