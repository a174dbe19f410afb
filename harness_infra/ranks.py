"""This process's place in a torchrun or SLURM job, and the one rule for work that rank 0 does while the others wait.

Ranks come from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) when any of it is set, else from
SLURM's (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``: one ``srun`` task per GPU, e.g. the
``hydra/launcher=slurm_gpus`` launcher); a plain process is rank 0 of 1. torchrun's win when both are set (torchrun
started inside a SLURM allocation, one task per node). ``launcher()`` says which one the numbers came from.
``rank0_builds`` is how every stage that writes shared files (shards, caches) runs under DDP: rank 0 builds and
writes a completion marker last; every other rank polls for that marker, and a build that never completes is a
``TimeoutError`` naming the marker and the rank, never a silent hang.
"""

from __future__ import annotations

import os
import time
from typing import Callable, TypeVar

T = TypeVar("T")
DEFAULT_WAIT_S = 24 * 3600.0  # the longest a rank waits for rank 0's build (a shard build of a large data set)
POLL_S = 2.0


TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
SLURM = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


def launcher() -> str:
    """``torchrun`` when any of torchrun's variables is set, else ``slurm`` when ``SLURM_PROCID`` and
    ``SLURM_NTASKS`` are, else ``none`` (a plain process)."""
    if any(name in os.environ for name in TORCHRUN):
        return "torchrun"
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        return "slurm"
    return "none"


def _read(index: int, default: str) -> int:
    """The ``index``-th number (rank, world size, local rank) from the launcher that started this process."""
    names = {"torchrun": TORCHRUN, "slurm": SLURM}.get(launcher())
    return int(os.environ.get(names[index], default)) if names else int(default)


def rank() -> int:
    """Global rank (``RANK``, else ``SLURM_PROCID``), 0 for a plain process."""
    return _read(0, "0")


def world_size() -> int:
    """Number of processes in the job (``WORLD_SIZE``, else ``SLURM_NTASKS``), 1 for a plain process."""
    return _read(1, "1")


def local_rank() -> int:
    """Rank on this node (``LOCAL_RANK``, else ``SLURM_LOCALID``), 0 for a plain process."""
    return _read(2, "0")


def is_main() -> bool:
    """True on rank 0: the rank that builds shared files, evaluates and publishes."""
    return rank() == 0


def wait_until(done: Callable[[], bool], what: str, timeout_s: float = DEFAULT_WAIT_S, poll_s: float = POLL_S) -> None:
    """Poll ``done()`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank()}: {what} was not completed by rank 0 within {timeout_s:.0f} s")
        time.sleep(poll_s)


def rank0_builds(
    build: Callable[[], T],
    done: Callable[[], bool],
    read: Callable[[], T],
    what: str,
    timeout_s: float = DEFAULT_WAIT_S,
) -> T:
    """Rank 0 runs ``build()`` (which must make ``done()`` true, marker last) and returns its value; every other
    rank waits for ``done()`` and returns ``read()``. ``what`` names the output in the timeout message."""
    if is_main():
        return build()
    wait_until(done, what, timeout_s)
    return read()
