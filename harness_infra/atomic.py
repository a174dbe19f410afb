"""The one atomic writer (and file hashing) of the project: shards, checkpoints, exports, caches, records, tables.

Every write goes to a temporary file in the target folder, is flushed and fsynced, gets the
permission bits a plain ``open`` would give, and is renamed onto the target; on any error the
temporary file is removed, so a reader never sees a partial file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import tempfile
from typing import IO, Any, Callable

log = logging.getLogger(__name__)
TMP_PREFIX = ".tmp-"  # every temporary name this module makes: TMP_PREFIX + random + the target's base name


def default_file_mode() -> int:
    """Permission bits a plain ``open`` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class AtomicFile:
    """A binary file written under a temporary name beside ``path`` and moved onto ``path`` only by ``commit``.

    For writers that stream (a webdataset tar written sample by sample): ``handle`` is the open temporary file;
    ``commit()`` flushes, fsyncs, gives it the permission bits a plain ``open`` would give (0644 under umask 022) and
    renames it onto ``path`` (``overwrite=False``: hard-links it, ``FileExistsError`` when the name exists);
    ``abort()`` (or leaving a ``with`` block by an exception) removes it, so a reader never sees a partial file.
    """

    def __init__(self, path: str, overwrite: bool = True) -> None:
        self.path, self.overwrite = path, overwrite
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.basename(path), dir=folder)
        self.handle: IO[bytes] = os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Make the finished file visible under ``path``."""
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.chmod(self.tmp, default_file_mode())
            if self.overwrite:
                os.replace(self.tmp, self.path)
            else:
                _link_new(self.tmp, self.path)
        finally:
            self._remove_tmp()

    def abort(self) -> None:
        """Drop the unfinished file."""
        if not self.handle.closed:
            self.handle.close()
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def clear_partial_files(folder: str, name: str = "", recursive: bool = False) -> int:
    """Remove the temporary files (``.tmp-*``) a killed writer left in ``folder`` for targets whose base name contains
    ``name`` (every one when empty; with ``recursive`` in sub-folders too); returns how many were removed (logged).

    Call only as the folder's owner (holding its lock, ``harness_infra.locks.exclusive``): a live writer's temporary
    file would be removed too. A missing folder removes nothing.
    """
    pattern = TMP_PREFIX + "*" + glob.escape(name) + "*"
    where = (
        os.path.join(glob.escape(folder), "**", pattern) if recursive else os.path.join(glob.escape(folder), pattern)
    )
    removed = 0
    for leftover in glob.glob(where, recursive=recursive):
        if os.path.isfile(leftover):
            os.unlink(leftover)
            removed += 1
    if removed:
        log.info("removed %d temporary file(s) of a killed writer under %s", removed, folder)
    return removed


def atomic_write(path: str, write: Callable[[IO[bytes]], None], overwrite: bool = True) -> None:
    """Call ``write(handle)`` on a temporary binary file beside ``path``, then move it onto ``path``.

    ``overwrite=True`` renames over an existing file; ``overwrite=False`` never replaces one: the finished file is
    hard-linked to ``path`` (``FileExistsError`` when the name exists), so two writers racing for one name cannot
    both win. Either way the file gets the permission bits a plain ``open`` would give (0644 under umask 022).
    """
    with AtomicFile(path, overwrite) as target:
        write(target.handle)


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
