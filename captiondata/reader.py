"""The one reader of caption shards: expand shard specs, open any URL, walk tars, validate samples.

Bad input never crashes the stream and is never lost silently: unreadable shards, truncated tars,
duplicate keys, corrupt/empty/oversized images, missing/empty/non-UTF-8 captions are skipped and
counted in ``SampleCounters`` (see ``counters.SKIP_REASONS``).
"""

from __future__ import annotations

import glob
import logging
import os
import tarfile
from zlib import error as zlib_error
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, Union
from urllib.parse import urlparse

import importlib
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from captiondata.captions import extract_captions
from harness_infra.errors import ConfigError
from captiondata.config import CaptionLayout
from captiondata.counters import SampleCounters
from captiondata.decode import DEFAULT_MAX_PIXELS, BadSample, Count, decode_image
from captiondata.records import Record

log = logging.getLogger(__name__)
wds_gopen = importlib.import_module("webdataset.gopen")  # the module; ``webdataset.gopen`` the attribute is the function


def _is_local(url: str) -> bool:
    """True for plain paths and file:// URLs."""
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def expand_shards(spec: Union[str, List[str]]) -> List[str]:
    """Shard URLs of a spec: ``::``-joined parts, brace expansion, and globs for local paths.

    Raises ConfigError when a local part matches no file.
    """
    parts = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    urls: List[str] = []
    for part in parts:
        for url in expand_urls(str(part)):
            if not _is_local(url):
                urls.append(url)
                continue
            path = url[len("file://"):] if url.startswith("file://") else url
            matches = sorted(glob.glob(os.path.expanduser(path))) if glob.has_magic(path) else [path]
            found = [m for m in matches if os.path.isfile(m)]
            if not found:
                raise ConfigError(f"no shard matches {path!r}")
            urls.extend(found)
    return urls


def open_shard(url: str) -> IO[bytes]:
    """A readable byte stream for a shard: local file, any webdataset gopen scheme (pipe:, http(s), gs, ...),
    else fsspec (s3://, gcs://, memory://, ...)."""
    if _is_local(url):
        return open(url[len("file://"):] if url.startswith("file://") else url, "rb")
    scheme = urlparse(url).scheme
    if scheme in wds_gopen.gopen_schemes:
        return wds_gopen.gopen(url, "rb")
    import fsspec  # optional dependency for object stores

    return fsspec.open(url, "rb").open()


class _CountingReader:
    """A read-only byte stream wrapper that counts the bytes read and remembers the first four."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.count, self.head = raw, 0, b""

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if len(self.head) < 4:
            self.head = (self.head + data)[:4]
        self.count += len(data)
        return data

    def drain(self) -> int:
        """Read to the end; return the total number of bytes in the stream."""
        while self.read(1 << 16):
            pass
        return self.count


COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zX")
TAR_TAIL_SLACK = 1 << 16  # end-of-archive blocks plus record padding allowed after the last member


def _ends_cleanly(counting: _CountingReader, offset: int) -> bool:
    """True when an uncompressed tar stopped at its end-of-archive marker (tarfile stops silently at a
    cut header or a corrupt one); compressed streams report truncation themselves."""
    if counting.head.startswith(COMPRESSED_MAGIC):
        return True
    total = counting.drain()
    return offset + 1024 <= total <= offset + 1024 + TAR_TAIL_SLACK


def _tar_members(url: str, counters: SampleCounters) -> Iterator[tuple]:
    """(name, bytes) of each regular member. A truncated or corrupt tar ends the shard, counted, with
    a final (None, name) where name is the member that was cut (None when a header was cut)."""
    try:
        stream = open_shard(url)
    except (OSError, ValueError, ImportError) as exc:
        counters.add("unreadable_shard")
        log.warning("skipping unreadable shard %s: %s", url, exc)
        return
    counting = _CountingReader(stream)
    with stream:
        cut: Optional[str] = None
        try:
            with tarfile.open(fileobj=counting, mode="r|*") as archive:
                for info in archive:
                    if info.isreg():
                        cut = info.name
                        data = archive.extractfile(info).read()
                        cut = None
                        yield info.name, data
                clean = _ends_cleanly(counting, archive.offset)
            if not clean:
                raise tarfile.ReadError("no end-of-archive marker where the last member ends")
        except (tarfile.TarError, EOFError, OSError, zlib_error) as exc:
            counters.add("truncated_tar")
            log.warning("shard %s is truncated or corrupt (%s); its incomplete last sample is dropped", url, exc)
            yield None, cut


def raw_samples(urls: Iterable[str], counters: SampleCounters) -> Iterator[Dict[str, Any]]:
    """Group consecutive tar members by key into dicts {__key__, __url__, suffix: bytes}.

    A key that repeats a member suffix, or reappears later in the same shard, is a duplicate:
    every copy after the first is dropped and counted.
    """
    for url in urls:
        seen: set = set()
        current: Optional[Dict[str, Any]] = None
        broken = False
        for name, data in _tar_members(url, counters):
            if name is None:  # truncation: drop the sample the cut member belonged to (unknown: the last one)
                if data is not None and current is not None and base_plus_ext(data)[0] != current["__key__"] and not broken:
                    yield current
                current = None
                break
            key, suffix = base_plus_ext(name)
            if key is None:
                continue
            suffix = suffix.lower()
            if current is None or key != current["__key__"]:
                if current is not None and not broken:
                    yield current
                broken = False
                if key in seen:
                    counters.add("duplicate_key")
                    broken = True
                seen.add(key)
                current = {"__key__": key, "__url__": url}
            if suffix in current and not broken:
                counters.add("duplicate_key")
                broken = True
            current[suffix] = data
        if current is not None and not broken:
            yield current


def decode_record(raw: Dict[str, Any], layout: CaptionLayout, max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True,
                  exif_transpose: bool = True, count: Count = None) -> Record:
    """Validate one raw sample into a Record (image decoded to RGB by ``decode_image`` unless ``decode`` is False;
    ``exif_transpose`` and ``count`` are passed to it: ``count`` receives each image conversion's name).

    Raises BadSample with the skip reason.
    """
    image_member = next((m for m in layout.image_members if m in raw), None)
    if image_member is None:
        raise BadSample("missing_image")
    captions = extract_captions(raw, layout)
    data = raw[image_member]
    image = decode_image(data, max_pixels, exif_transpose, count) if decode else data
    meta = captions["json"] or {}
    return Record(
        key=raw["__key__"],
        image=image,
        original=captions["original"],
        recaptions=captions["recaptions"],
        references=captions["references"],
        meta=meta.get("meta", meta) if isinstance(meta, dict) else {},
        image_ext=image_member,
    )


def valid_records(raws: Iterable[Dict[str, Any]], layout: CaptionLayout, counters: SampleCounters, max_pixels: int = DEFAULT_MAX_PIXELS,
                  exif_transpose: bool = True) -> Iterator[Record]:
    """Decoded Records; bad samples skipped and counted by reason, image conversions counted by kind."""
    for raw in raws:
        try:
            yield decode_record(raw, layout, max_pixels, exif_transpose=exif_transpose, count=counters.add)
        except BadSample as bad:
            counters.add(bad.reason)
            log.debug("skipping sample %s from %s: %s", raw.get("__key__"), raw.get("__url__"), bad)


def iter_samples(
    urls: Union[str, List[str]],
    layout: CaptionLayout,
    counters: Optional[SampleCounters] = None,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
    exif_transpose: bool = True,
) -> Iterator[Record]:
    """Every valid sample of a shard spec in order, decoded (for evaluation, diagnostics, recaptioning)."""
    counters = counters if counters is not None else SampleCounters(max_workers=0)
    shard_urls = expand_shards(urls) if isinstance(urls, str) else list(urls)
    try:
        yield from valid_records(raw_samples(shard_urls, counters), layout, counters, max_image_pixels, exif_transpose)
    finally:
        counters.flush()
