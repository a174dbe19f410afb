"""The process settings of a training run: torch threads, denormal flushing, deterministic kernels; restored after.

Flushing denormals to zero (CPU) avoids multi-second first steps: early AdamW second moments and rarely updated
weights' gradients are denormal floats, which x86 handles in slow microcode. ``deterministic`` turns on
``torch.use_deterministic_algorithms`` (bitwise-reproducible resume on CPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from training.distributed import DistEnv


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


@contextlib.contextmanager
def run_logging(out_dir: str, env: DistEnv, logger_names: Sequence[str]) -> Iterator[None]:
    """Copy the named loggers' INFO records to ``out_dir/train.log`` on rank 0 for the run (other ranks: nothing)."""
    if not env.is_main:
        yield
        return
    os.makedirs(out_dir, exist_ok=True)
    handler = logging.FileHandler(os.path.join(out_dir, "train.log"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()
