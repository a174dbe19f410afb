"""An exclusive lock on a file path, for work that parallel jobs of one sweep must not do twice at once.

Jobs launched side by side (``hydra/launcher=joblib``, ``submitit_local``, a SLURM array) share stage folders: two
jobs at different p need the same shards, and every job rebuilds the same results table. ``exclusive(path)`` holds
``fcntl.flock`` on ``path`` (created if missing) for the ``with`` block, so the second job waits, then finds the
first one's completed marker. flock is per open file, released when the process dies (a killed job never leaves a
stale lock); on Linux NFS it is emulated with byte-range locks, so it also holds across nodes there.

Re-entrant within one process: an ``exclusive`` on a path this process already holds returns at once (two flocks on
one file from one process would wait on each other forever), so a writer that locks its folder can be called by a
caller that already holds that lock. It is a lock between processes, not between threads of one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Dict, Iterator, Tuple

_HELD: Dict[
    Tuple[int, str], int
] = {}  # (pid, real path) -> nesting depth; the pid keeps a forked child from inheriting


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block (blocking until every other process holding it has left;
    at once when this process holds it already)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    held = (os.getpid(), os.path.realpath(path))
    if held in _HELD:
        _HELD[held] += 1
        try:
            yield
        finally:
            _HELD[held] -= 1
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        _HELD[held] = 1
        try:
            yield
        finally:
            del _HELD[held]
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
