"""An exclusive lock on a file path, for work that parallel jobs of one sweep must not do twice at once.

Jobs launched side by side (``hydra/launcher=joblib``, ``submitit_local``, a SLURM array) share stage folders: two
jobs at different p need the same shards, and every job rebuilds the same results table. ``exclusive(path)`` holds
``fcntl.flock`` on ``path`` (created if missing) for the ``with`` block, so the second job waits, then finds the
first one's completed marker. flock is per open file, released when the process dies (a killed job never leaves a
stale lock); on Linux NFS it is emulated with byte-range locks, so it also holds across nodes there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block (blocking until every other holder has left)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
