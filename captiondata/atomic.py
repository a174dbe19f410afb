"""Atomic file writes and file hashing shared by the shard writer, the trainer and the evals.

Every write goes to a temporary file in the target folder, is flushed and fsynced, gets the
permission bits a plain ``open`` would give, and is renamed onto the target; on any error the
temporary file is removed, so a reader never sees a partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import IO, Any, Callable


def default_file_mode() -> int:
    """Permission bits a plain ``open`` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(handle)`` on a temporary binary file beside ``path``, then rename it onto ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted UTF-8 JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_torch_save(obj: Any, path: str) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    import torch

    atomic_write(path, lambda handle: torch.save(obj, handle))


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
