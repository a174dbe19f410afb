"""captiondata.reader's own tar walker against tarfile's streaming reader (the reference it replaced): the same
members, names and bytes, and the same truncation verdicts, on ustar/GNU/pax archives cut or corrupted anywhere."""

from __future__ import annotations

import io
import random
import tarfile
from typing import List, Optional

import pytest

from captiondata import reader
from captiondata.counters import SampleCounters


def reference_members(data: bytes) -> List[tuple]:
    """The previous ``_tar_members`` (tarfile, mode r|*) over bytes; returns its items plus the truncated_tar count."""
    counting = reader._CountingReader(io.BytesIO(data))
    out: List[tuple] = []
    cut: Optional[str] = None
    try:
        with tarfile.open(fileobj=counting, mode="r|*") as archive:
            for info in archive:
                if info.isreg():
                    cut = info.name
                    body = archive.extractfile(info).read()
                    cut = None
                    out.append((info.name, body))
            clean = reader._ends_cleanly(counting, archive.offset)
        if not clean:
            raise tarfile.ReadError("unclean end")
    except (tarfile.TarError, EOFError, OSError):
        out.append((None, cut))
    return out


def ours(data: bytes, tmp_path, monkeypatch) -> List[tuple]:
    path = tmp_path / "shard.tar"
    path.write_bytes(data)
    counters = SampleCounters(max_workers=0)
    items = list(reader._tar_members(str(path), counters))
    counters.flush()
    assert counters.totals()["truncated_tar"] == (1 if items and items[-1][0] is None else 0)
    return items


def archive(fmt: int, names: List[str], sizes: List[int], extras: bool = True) -> bytes:
    buffer = io.BytesIO()
    rng = random.Random(0)
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        if extras:
            folder = tarfile.TarInfo("dir/")
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
            link = tarfile.TarInfo("link.txt")
            link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
            tar.addfile(link)
        for name, size in zip(names, sizes):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(rng.randrange(256) for _ in range(size))))
    return buffer.getvalue()


LONG = "deep/" * 30 + "k" * 120 + ".jpg"  # > 100 and > 255 characters: GNU long name / pax path
NAMES = ["a.jpg", "a.txt", "b.jpg", "b.json", LONG, "c.txt", "pre/" * 30 + "x.txt", "caf\u00e9.txt"]
SIZES = [700, 0, 512, 1025, 3, 10, 511, 5]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_same_members_as_tarfile(fmt, tmp_path, monkeypatch):
    names = NAMES if fmt != tarfile.USTAR_FORMAT else [n for n in NAMES if n != LONG]
    data = archive(fmt, names, SIZES[: len(names)])
    expected = reference_members(data)
    assert [n for n, _ in expected] == names
    assert ours(data, tmp_path, monkeypatch) == expected


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_same_verdict_when_cut_or_corrupted_anywhere(fmt, tmp_path, monkeypatch):
    data = archive(fmt, NAMES[:6], SIZES[:6])
    cuts = sorted(set(range(0, len(data), 173)) | {512 * k + d for k in range(len(data) // 512) for d in (0, 1, 511)})
    for cut in cuts:
        assert ours(data[:cut], tmp_path, monkeypatch) == reference_members(data[:cut]), f"cut at {cut}"
    rng = random.Random(1)
    for position in rng.sample(range(len(data)), 60) + [148, 150, 124, 130, 156, 600, 1030]:
        bad = bytearray(data)
        bad[position] ^= 0x5A
        assert ours(bytes(bad), tmp_path, monkeypatch) == reference_members(bytes(bad)), f"byte {position} flipped"


def test_base256_size_and_not_a_tar(tmp_path, monkeypatch):
    data = bytearray(archive(tarfile.GNU_FORMAT, ["a.bin"], [40], extras=False))
    data[124:136] = b"\x80" + (40).to_bytes(11, "big")  # GNU base-256 size, checksum recomputed
    data[148:156] = b"%06o\x00 " % (sum(data[:148]) + 8 * 32 + sum(data[156:512]))  # checksum field counted as spaces
    assert ours(bytes(data), tmp_path, monkeypatch) == reference_members(bytes(data))
    assert ours(bytes(data), tmp_path, monkeypatch)[0][0] == "a.bin"
    for junk in (b"", b"x" * 100, b"not a tar" * 200):
        assert ours(junk, tmp_path, monkeypatch) == reference_members(junk) == [(None, None)]


def test_seek_skips_unwanted_members():
    data = archive(tarfile.PAX_FORMAT, NAMES, SIZES)
    items = list(reader.iter_tar(io.BytesIO(data), want=lambda n: n.endswith(".txt"), seekable=True))
    assert [n for n, _ in items] == NAMES
    assert [b is None for _, b in items] == [not n.endswith(".txt") for n in NAMES]
    assert dict(items)["c.txt"] == dict(reference_members(data))["c.txt"]
