"""The one atomic writer (and file hashing) of the project: shards, checkpoints, exports, caches, records, tables.

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


def atomic_write(path: str, write: Callable[[IO[bytes]], None], overwrite: bool = True) -> None:
    """Call ``write(handle)`` on a temporary binary file beside ``path``, then move it onto ``path``.

    ``overwrite=True`` renames over an existing file; ``overwrite=False`` never replaces one: the finished file is
    hard-linked to ``path`` (``FileExistsError`` when the name exists), so two writers racing for one name cannot
    both win. Either way the file gets the permission bits a plain ``open`` would give (0644 under umask 022).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _link_new(tmp: str, path: str) -> None:
    """Give the finished ``tmp`` the name ``path`` only if that name is free (FileExistsError otherwise)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; refusing to overwrite") from None
    except OSError:  # no hard links on this file system: claim the name exclusively, then move the file onto it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(tmp, path)


def atomic_write_bytes(path: str, data: bytes, overwrite: bool = True) -> None:
    """Atomically write ``data`` to ``path`` (``overwrite=False``: FileExistsError rather than replace a file)."""
    atomic_write(path, lambda handle: handle.write(data), overwrite)


def atomic_write_text(path: str, text: str, overwrite: bool = True) -> None:
    """Atomically write UTF-8 ``text`` to ``path`` (``overwrite=False``: FileExistsError rather than replace a file)."""
    atomic_write_bytes(path, text.encode("utf-8"), overwrite)


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
