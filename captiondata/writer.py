"""Atomic webdataset shard writer for the project layout.

Each shard is written through ``harness_infra.atomic.AtomicFile`` (a temporary name in the target folder, renamed
into place when complete), so a reader never sees a half-written shard and a crash leaves no partial ``.tar``.
Layout per sample: ``KEY.<ext>`` image, ``KEY.txt`` original caption, ``KEY.json``
``{"key", "recaptions": [...], "captions": [references], "meta": {...}}`` and, for labelled
samples, ``KEY.cls`` (the integer class, as CLIP_benchmark's webdataset layout has it).
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional

import webdataset as wds
from PIL import Image

from captiondata.records import Record
from harness_infra.atomic import AtomicFile, atomic_write_bytes, atomic_write_json, file_sha256


def encode_image(image: Any, ext: str, quality: int = 95) -> bytes:
    """Image bytes for a tar member: bytes pass through, PIL images are encoded as ``ext``."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be PIL.Image or bytes, got {type(image).__name__}")
    buffer = io.BytesIO()
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    image.save(buffer, format=fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    return buffer.getvalue()


def record_members(record: Record) -> Dict[str, Any]:
    """The webdataset sample dict of a Record in the project layout."""
    sample: Dict[str, Any] = {"__key__": record.key, record.image_ext: encode_image(record.image, record.image_ext)}
    if record.original is not None:
        sample["txt"] = record.original
    if "label" in record.meta:  # CLIP_benchmark's class-label member
        sample["cls"] = str(int(record.meta["label"]))
    sample["json"] = json.dumps(
        {"key": record.key, "recaptions": record.recaptions, "captions": record.references, "meta": record.meta},
        ensure_ascii=False,
    ).encode("utf-8")
    return sample


NSHARDS = "nshards.txt"
_CB_MEMBER = re.compile(r"(\d+\.tar|nshards\.txt)")


class ShardWriter:
    """Write Records into ``{folder}/{prefix}-{index:06d}.tar`` shards of at most ``max_count`` samples.

    With ``clip_benchmark=True`` the folder is a split of CLIP_benchmark's webdataset layout instead
    (``clip_benchmark.datasets.builder.build_wds_dataset``): shards ``0.tar``, ``1.tar``, ... and ``nshards.txt``
    (their count), written by ``close`` before the manifest. Refuses to overwrite existing shards of the same prefix
    (any shard of a CLIP_benchmark folder) unless ``overwrite`` is set; ``close`` writes ``{prefix}-manifest.json``
    (shard names, sizes, sha256, sample counts) last.
    """

    def __init__(
        self, folder: str, prefix: str, max_count: int = 1000, overwrite: bool = False, clip_benchmark: bool = False
    ) -> None:
        if max_count <= 0:
            raise ValueError(f"max_count={max_count} must be positive")
        os.makedirs(folder, exist_ok=True)
        existing = sorted(
            f
            for f in os.listdir(folder)
            if (f.startswith(prefix + "-") and f.endswith((".tar", "-manifest.json")))
            or (clip_benchmark and _CB_MEMBER.fullmatch(f))
        )
        if existing and not overwrite:
            raise FileExistsError(
                f"{folder} already holds {prefix} shards ({existing[0]}, ...); pass overwrite=True to replace them"
            )
        for name in existing:
            os.unlink(os.path.join(folder, name))
        self.folder, self.prefix, self.max_count, self.clip_benchmark = folder, prefix, max_count, clip_benchmark
        self.shards: List[Dict[str, Any]] = []
        self._writer: Optional[wds.TarWriter] = None
        self._file: Optional[AtomicFile] = None
        self._count = 0

    def _open_next(self) -> None:
        """Start a new shard under a temporary name."""
        name = f"{len(self.shards)}.tar" if self.clip_benchmark else f"{self.prefix}-{len(self.shards):06d}.tar"
        self._file = AtomicFile(os.path.join(self.folder, name))
        # GNU format with a fixed mtime: byte-reproducible shards without per-member pax headers
        self._writer = wds.TarWriter(self._file.handle, format="GNU_FORMAT", mtime=0)
        self._count = 0

    def _finish_current(self) -> None:
        """Finish the tar stream of the current shard and move it into place."""
        if self._writer is None:
            return
        self._writer.close()  # webdataset's TarWriter leaves the file it was given open
        self._file.commit()
        final = self._file.path
        self.shards.append(
            {
                "name": os.path.basename(final),
                "count": self._count,
                "bytes": os.path.getsize(final),
                "sha256": file_sha256(final),
            }
        )
        self._writer, self._file = None, None

    def write(self, record: Record) -> None:
        """Append one Record."""
        if self._writer is None:
            self._open_next()
        self._writer.write(record_members(record))
        self._count += 1
        if self._count >= self.max_count:
            self._finish_current()

    def write_all(self, records: Iterable[Record]) -> int:
        """Append every Record; return how many were written."""
        n = 0
        for record in records:
            self.write(record)
            n += 1
        return n

    def close(self) -> Dict[str, Any]:
        """Finish the last shard and write the manifest; return it."""
        self._finish_current()
        manifest = {"prefix": self.prefix, "samples": sum(s["count"] for s in self.shards), "shards": self.shards}
        if self.clip_benchmark:
            atomic_write_bytes(os.path.join(self.folder, NSHARDS), f"{len(self.shards)}\n".encode())
        atomic_write_json(os.path.join(self.folder, f"{self.prefix}-manifest.json"), manifest)
        return manifest

    def abort(self) -> None:
        """Drop the shard in progress (after an error)."""
        if self._writer is not None:
            self._file.abort()
            self._writer, self._file = None, None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_raw_shard(path: str, samples: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Write raw samples (``{"__key__": KEY, SUFFIX: bytes, ...}``, as ``captiondata.reader.raw_samples`` yields them)
    into one tar at ``path``, every member's bytes as given, atomically; returns {name, count, bytes, sha256}.

    For stages that add members to existing shards (the recaption stage): images and other members pass through
    untouched. Keys starting with ``__`` other than ``__key__`` (``__url__``) are not written.
    """
    count = 0
    with AtomicFile(path) as target:
        writer = wds.TarWriter(target.handle, format="GNU_FORMAT", mtime=0)
        for sample in samples:
            writer.write({k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")})
            count += 1
        writer.close()
    return {"name": os.path.basename(path), "count": count, "bytes": os.path.getsize(path), "sha256": file_sha256(path)}
