"""This process's place in a torchrun job, and the one rule for work that rank 0 does while the others wait.

Ranks come from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a plain process is rank 0 of 1.
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


def rank() -> int:
    """Global rank under torchrun (``RANK``), 0 for a plain process."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes in the job (``WORLD_SIZE``), 1 for a plain process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """Rank on this node (``LOCAL_RANK``), 0 for a plain process."""
    return int(os.environ.get("LOCAL_RANK", "0"))


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


def rank0_builds(build: Callable[[], T], done: Callable[[], bool], read: Callable[[], T], what: str,
                 timeout_s: float = DEFAULT_WAIT_S) -> T:
    """Rank 0 runs ``build()`` (which must make ``done()`` true, marker last) and returns its value; every other
    rank waits for ``done()`` and returns ``read()``. ``what`` names the output in the timeout message."""
    if is_main():
        return build()
    wait_until(done, what, timeout_s)
    return read()
