"""The one reader of caption shards: expand shard specs, open any URL, walk tars, validate samples.

Bad input never crashes the stream and is never lost silently: unreadable shards, truncated tars,
duplicate keys, corrupt/empty/oversized images, missing/empty/non-UTF-8 captions are skipped and
counted in ``SampleCounters`` (see ``counters.SKIP_REASONS``).
"""

from __future__ import annotations

import bz2
import glob
import gzip
import importlib
import logging
import lzma
import os
import struct
import tarfile
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union
from urllib.parse import urlparse
from zlib import error as zlib_error

from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from captiondata.captions import extract_captions
from captiondata.config import DEFAULT_MAX_MEMBER_BYTES, CaptionLayout
from captiondata.counters import SampleCounters
from captiondata.decode import DEFAULT_MAX_PIXELS, BadSample, Count, DraftRule, decode_image
from captiondata.records import Record
from harness_infra.errors import ConfigError

log = logging.getLogger(__name__)
wds_gopen = importlib.import_module(
    "webdataset.gopen"
)  # the module; ``webdataset.gopen`` the attribute is the function


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
            path = url[len("file://") :] if url.startswith("file://") else url
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
        return open(url[len("file://") :] if url.startswith("file://") else url, "rb")
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

    def drain(self, limit: Optional[int] = None) -> int:
        """Read to the end (or until more than ``limit`` bytes were read); return the number of bytes read in all."""
        while (limit is None or self.count <= limit) and self.read(1 << 16):
            pass
        return self.count


COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zX")
TAR_TAIL_SLACK = 1 << 16  # end-of-archive blocks plus record padding allowed after the last member


def _ends_cleanly(counting: _CountingReader, offset: int) -> bool:
    """True when a tar (the decompressed stream of a compressed one) stopped at its end-of-archive marker (tarfile
    stops silently at a cut header or a corrupt one); reads at most the allowed tail, so a compressed stream with a
    huge tail is not decompressed to its end."""
    total = counting.drain(offset + 1024 + TAR_TAIL_SLACK)
    return offset + 1024 <= total <= offset + 1024 + TAR_TAIL_SLACK


def _decompressed(stream: Any, head: bytes) -> Any:
    """A streaming reader of the decompressed bytes of a gzip, bzip2 or xz stream (read() only, no seek: pipes and
    HTTP bodies work). Truncation raises EOFError, corrupt data OSError, zlib.error or lzma.LZMAError."""
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(stream, mode="rb")
    return lzma.LZMAFile(stream, mode="rb")


class TarFormatError(Exception):
    """A header that is not a valid tar header (bad checksum or number field)."""


_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # tarfile's REGTYPE, AREGTYPE, CONTTYPE (GNU sparse files are skipped)
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6", b"S")  # tarfile's supported non-regular types: no data blocks skipped
_META = (b"L", b"K", b"x", b"g", b"X")  # GNU long name / long link, pax extended / global, Solaris extended header
_SIGNED_SUMS = struct.Struct("148b8x356b")
_MAX_SIZE = (1 << 62) - 1  # larger sizes (GNU base-256 allows 2**95) address no real file and overflow seek()/read()
_MAX_META = 1 << 24  # a GNU long name or pax header is read whole: longer ones are refused (names are a few KB)


def _tar_number(field: bytes) -> int:
    """A header number field as tarfile's ``nti`` reads it: octal ASCII (NUL/space padded) or GNU base-256."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise TarFormatError(f"bad number field {field!r}") from None


def _pax_records(data: bytes) -> Dict[str, str]:
    """The ``LENGTH KEY=VALUE`` newline-ended records of a pax extended header (UTF-8, as tarfile decodes them)."""
    out: Dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos : pos + 1] != b"\0":
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        if length <= 0 or pos + length > len(data):
            raise TarFormatError("bad pax record")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def iter_tar(
    stream: IO[bytes],
    state: Optional[Dict[str, Any]] = None,
    want: Optional[Callable[[str], bool]] = None,
    seekable: bool = False,
    max_size: Optional[int] = None,
) -> Iterator[Tuple[str, Optional[bytes]]]:
    """(name, bytes) of each regular member of an uncompressed tar read from ``stream`` in order. With ``want``, a
    member whose name it rejects comes as (name, None) and its data is skipped (by ``stream.seek`` when ``seekable``,
    else read and discarded in 1 MiB chunks); so does a member larger than ``max_size`` bytes (never allocated).

    Reads the 512-byte headers itself, as tarfile does: checksum (unsigned or signed sum), names from the ustar name
    plus prefix, GNU long names (``L``) and pax ``path`` records (``x``; ``g`` for every later member), sizes in octal,
    GNU base-256 or a pax ``size`` record. Directories, links, devices and GNU sparse files are skipped. It stops (returns) at a zero block or a
    header that is empty or cut short, and at an invalid header after the first (tarfile stops there silently too;
    the caller checks where the stream ended). Raises TarFormatError for an invalid first header or one following a
    GNU/pax header (tarfile's ReadError; also a size above 2**62 bytes), EOFError when a member's data (or the padding after it, after the member was
    yielded) is cut. ``state`` receives ``offset`` (where the header that ended the walk starts) and ``member`` (the
    name whose data is being read, None between members).

    Why not tarfile: ``tarfile.open(fileobj, "r|*")`` builds a full TarInfo (a dozen number and string fields) per
    member behind several layers of Python (the ``_Stream`` block reader, pax/GNU dispatch, an ``extractfile`` wrapper
    per member); on Flickr8k shards it took 22 us per member against 5 us here (``python benchmarks/loader.py
    --tar-only``), and webdataset samples have 2 or 3 members each.
    """
    state = state if state is not None else {}
    read = stream.read
    offset = 0
    long_name: Optional[str] = None
    pax: Dict[str, str] = {}
    global_pax: Dict[str, str] = {}
    pending = False  # a GNU long name or pax header was read: the next header must be valid
    state["member"] = None
    while True:
        state["offset"] = offset
        header = read(_BLOCK)
        if len(header) < _BLOCK or header == _ZERO_BLOCK:
            return
        try:
            checksum = _tar_number(header[148:156])
            valid = checksum == sum(header) - sum(header[148:156]) + 256 or checksum == 256 + sum(
                _SIGNED_SUMS.unpack(header)
            )
            size = _tar_number(header[124:136]) if valid else -1
        except TarFormatError:
            valid = False
        if valid and size > _MAX_SIZE:  # a valid header whose member cannot exist: the shard is corrupt, not ended
            state["member"] = os.fsdecode(header[:100].split(b"\0", 1)[0])  # the cut sample (earlier ones are whole)
            raise TarFormatError(f"member size {size} at offset {offset} is beyond any file")
        if not valid or size < 0:
            if offset == 0 or pending:
                raise TarFormatError(f"invalid tar header at offset {offset}")
            return
        kind = header[156:157]
        offset += _BLOCK
        padded = -(-size // _BLOCK) * _BLOCK
        if kind in _META:
            if size > _MAX_META:
                raise TarFormatError(f"GNU or pax header of {size} bytes at offset {offset - _BLOCK}")
            body = read(padded)
            if len(body) < padded:
                raise EOFError("unexpected end of data in a GNU or pax header")
            offset += padded
            if kind == b"L":
                long_name = os.fsdecode(body[:size].split(b"\0", 1)[0])
            elif kind in (b"x", b"X"):
                pax = _pax_records(body[:size])
            elif kind == b"g":
                global_pax.update(_pax_records(body[:size]))
            pending = kind != b"g"
            continue
        pending = False
        name = os.fsdecode(header[:100].split(b"\0", 1)[0])
        if kind == b"\0" and name.endswith("/"):
            kind = b"5"
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix and kind not in (b"L", b"K", b"S"):
            name = os.fsdecode(prefix) + "/" + name
        if long_name is not None:
            name = long_name
        records = {**global_pax, **pax} if global_pax else pax
        if records:
            name = records.get("path", name)
            if "size" in records:
                try:
                    size = int(records["size"])
                except ValueError:  # not a number, or more digits than int() takes (sys.set_int_max_str_digits)
                    raise TarFormatError("bad pax size record") from None
                if not 0 <= size <= _MAX_SIZE:
                    raise TarFormatError(f"pax size record {size} out of range")
                padded = -(-size // _BLOCK) * _BLOCK
        long_name, pax = None, {}
        if kind in _REGULAR and (want is None or want(name)) and (max_size is None or size <= max_size):
            state["member"] = name
            body = read(padded)
            if len(body) < size:
                raise EOFError(f"unexpected end of data in {name}")
            state["member"] = None
            offset += padded
            yield name, (body if padded == size else body[:size])
            if len(body) < padded:
                raise EOFError(f"unexpected end of data after {name}")
            continue
        if kind in _NO_DATA and kind != b"S":
            padded = 0
        if padded:
            if seekable:
                stream.seek(padded, os.SEEK_CUR)
            else:
                remaining = padded
                while remaining:
                    chunk = read(min(remaining, 1 << 20))
                    if not chunk:
                        raise EOFError(f"unexpected end of data in {name}")
                    remaining -= len(chunk)
            offset += padded
        if kind in _REGULAR:
            yield name, None


class _Replay:
    """A read-only stream that first returns ``head``, then the rest of ``raw``."""

    def __init__(self, head: bytes, raw: Any) -> None:
        self.head, self.raw = head, raw

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(size)
        if size is None or size < 0:
            out, self.head = self.head + self.raw.read(), b""
            return out
        out, self.head = self.head[:size], self.head[size:]
        return out + self.raw.read(size - len(out)) if len(out) < size else out


def _tar_members(
    url: str, counters: SampleCounters, max_member_bytes: Optional[int] = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[tuple]:
    """(name, bytes) of each regular member; (name, None) for a member over ``max_member_bytes`` (its data skipped
    unread or read and discarded in chunks, never held). A truncated or corrupt tar ends the shard, counted, with a
    final (None, name) where name is the member that was cut (None when a header was cut).

    Every tar is walked by ``iter_tar``: gzip/bzip2/xz-compressed ones through a streaming decompressor
    (``_decompressed``), so the size cap holds for the decompressed bytes too (a 1 MB .tar.gz holding a 1 GiB
    member costs 1 MiB of memory)."""
    try:
        stream = open_shard(url)
    except (OSError, ValueError, ImportError) as exc:
        counters.add("unreadable_shard")
        log.warning("skipping unreadable shard %s: %s", url, exc)
        return
    with stream:
        state: Dict[str, Any] = {}
        try:
            head = stream.read(_BLOCK)
            counting = _CountingReader(_Replay(head, stream))
            tar = _CountingReader(_decompressed(counting, head)) if head.startswith(COMPRESSED_MAGIC) else counting
            if tar is counting and len(head) < _BLOCK:
                raise tarfile.ReadError("empty file" if not head else "truncated header")
            try:
                yield from iter_tar(tar, state, max_size=max_member_bytes)
            except TarFormatError as exc:
                raise tarfile.ReadError(str(exc)) from None
            if not _ends_cleanly(tar, state["offset"]):
                raise tarfile.ReadError("no end-of-archive marker where the last member ends")
        except (tarfile.TarError, EOFError, OSError, zlib_error, lzma.LZMAError) as exc:
            counters.add("truncated_tar")
            log.warning("shard %s is truncated or corrupt (%s); its incomplete last sample is dropped", url, exc)
            yield None, state.get("member")


IMAGE_SUFFIXES = frozenset(("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm"))


def dotted_key_samples(sample: Dict[str, Any]) -> int:
    """How many samples a dot in the key hid inside ``sample``: 0 when it has an image member of its own, else the
    number of distinct stems ``S`` among its ``S.EXT`` members with an image extension ``EXT``.

    webdataset splits a member name at the FIRST dot of its base name (``webdataset.tariterators.base_plus_ext``), so
    ``img.1.jpg``, ``img.2.jpg`` are one sample ``img`` with suffixes ``1.jpg`` and ``2.jpg`` and no ``jpg``: each stem is
    a lost sample (webdataset#237), counted as ``dotted_key`` rather than as one ``missing_image``. A sample with its
    own image member and dotted extras (``KEY.jpg`` + ``KEY.seg.png``) is intact (0)."""
    suffixes = [s for s in sample if not s.startswith("__")]
    if any(s in IMAGE_SUFFIXES for s in suffixes):
        return 0
    return len({s.rpartition(".")[0] for s in suffixes if "." in s and s.rpartition(".")[2] in IMAGE_SUFFIXES})


def _intact(sample: Dict[str, Any], counters: SampleCounters) -> bool:
    """False (counted as ``dotted_key``, once per hidden sample, with one warning) when dots in the key merged
    several samples into ``sample``."""
    lost = dotted_key_samples(sample)
    if lost:
        counters.add("dotted_key", lost)
        log.warning(
            "%s: %d sample(s) under key %r lost: webdataset takes the key up to the first dot of a member's base name "
            "(members %s); rename the members so keys have no dot (e.g. img_000001.jpg)",
            sample["__url__"],
            lost,
            sample["__key__"],
            ", ".join(sorted(s for s in sample if not s.startswith("__"))[:3]),
        )
    return not lost


def raw_samples(
    urls: Iterable[str], counters: SampleCounters, max_member_bytes: Optional[int] = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[Dict[str, Any]]:
    """Group consecutive tar members by key into dicts {__key__, __url__, suffix: bytes}.

    Keys are webdataset's (``base_plus_ext``: everything before the first dot of the base name). A key that repeats
    a member suffix, or reappears later in the same shard, is a duplicate: every copy after the first is dropped and
    counted. Samples merged by dots in their keys are dropped and counted one by one (``dotted_key_samples``). A
    sample with a member over ``max_member_bytes`` (``data.max_member_bytes``) is dropped and counted once as
    ``member_too_large``.
    """
    for url in urls:
        seen: set = set()
        current: Optional[Dict[str, Any]] = None
        broken = False
        for name, data in _tar_members(url, counters, max_member_bytes):
            if name is None:  # truncation: drop the sample the cut member belonged to (unknown: the last one)
                if (
                    data is not None
                    and current is not None
                    and base_plus_ext(data)[0] != current["__key__"]
                    and not broken
                    and _intact(current, counters)
                ):
                    yield current
                current = None
                break
            key, suffix = base_plus_ext(name)
            if key is None:
                continue
            suffix = suffix.lower()
            if current is None or key != current["__key__"]:
                if current is not None and not broken and _intact(current, counters):
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
            if data is None and not broken:  # over max_member_bytes: skipped unread by _tar_members
                counters.add("member_too_large")
                broken = True
            current[suffix] = data
        if current is not None and not broken and _intact(current, counters):
            yield current


def decode_record(
    raw: Dict[str, Any],
    layout: CaptionLayout,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode: bool = True,
    exif_transpose: bool = True,
    count: Count = None,
    draft: Optional[DraftRule] = None,
) -> Record:
    """Validate one raw sample into a Record (image decoded to RGB by ``decode_image`` unless ``decode`` is False;
    ``exif_transpose``, ``count`` and ``draft`` are passed to it: ``count`` receives each image conversion's name,
    ``draft`` allows JPEG draft decoding).

    Raises BadSample with the skip reason.
    """
    image_member = next((m for m in layout.image_members if m in raw), None)
    if image_member is None:
        raise BadSample("missing_image")
    captions = extract_captions(raw, layout)
    data = raw[image_member]
    image = decode_image(data, max_pixels, exif_transpose, count, draft=draft) if decode else data
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


def valid_records(
    raws: Iterable[Dict[str, Any]],
    layout: CaptionLayout,
    counters: SampleCounters,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_transpose: bool = True,
) -> Iterator[Record]:
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
