"""The bad-input corpus: every kind of broken sample is skipped and counted, nothing crashes."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib

import pytest
from conftest import jpeg_bytes

from captiondata.config import CaptionLayout, project_layout
from captiondata.counters import SampleCounters
from captiondata.reader import iter_samples


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append one member."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression-bomb stand-in)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def good(tar: tarfile.TarFile, key: str, seed: int) -> None:
    """A valid project-layout sample."""
    add(tar, f"{key}.jpg", jpeg_bytes(seed))
    add(tar, f"{key}.txt", f"alt {key}".encode())
    add(tar, f"{key}.json", json.dumps({"recaptions": [f"recap {key}"]}).encode())


@pytest.fixture
def bad_corpus(tmp_path):
    """Two shards: one with every kind of bad sample among good ones, one truncated; plus a missing shard."""
    path = tmp_path / "bad-000000.tar"
    jpeg = jpeg_bytes(1)
    with tarfile.open(path, "w") as tar:
        good(tar, "ok1", 1)
        add(tar, "corrupt.jpg", b"\xff\xd8\xff\xe0 definitely not a jpeg")
        add(tar, "corrupt.txt", b"alt")
        add(tar, "truncimg.jpg", jpeg[: len(jpeg) // 2])
        add(tar, "truncimg.txt", b"alt")
        add(tar, "zero.jpg", b"")
        add(tar, "zero.txt", b"alt")
        add(tar, "bomb.png", png_header_only(100_000, 100_000))
        add(tar, "bomb.txt", b"alt")
        add(tar, "nocap.jpg", jpeg)
        add(tar, "emptycap.jpg", jpeg)
        add(tar, "emptycap.txt", b"   \n")
        add(tar, "latin1.jpg", jpeg)
        add(tar, "latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"))
        add(tar, "badjson.jpg", jpeg)
        add(tar, "badjson.txt", b"alt")
        add(tar, "badjson.json", b"{not json")
        add(tar, "noimage.txt", b"caption without image")
        good(tar, "dup", 2)
        add(tar, "dup.txt", b"second txt for the same key")
        good(tar, "ok2", 3)
        good(tar, "ok1", 4)  # the key reappears later in the same shard
        good(tar, "ok3", 5)
    truncated = tmp_path / "bad-000001.tar"
    with tarfile.open(truncated, "w") as tar:
        good(tar, "t1", 6)
        good(tar, "t2", 7)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: 512 * 8 + 100])  # cut inside t2's image data
    return [str(path), str(truncated), str(tmp_path / "missing-000002.tar")]


def test_bad_corpus_is_skipped_and_counted(bad_corpus):
    counters = SampleCounters(max_workers=0)
    keys = [r.key for r in iter_samples(bad_corpus, project_layout(), counters, max_image_pixels=10_000_000)]
    assert keys == ["ok1", "ok2", "ok3", "t1"]
    totals = counters.totals()
    expected = {
        "corrupt_image": 2,
        "empty_image": 1,
        "image_too_large": 1,
        "missing_caption": 1,
        "empty_caption": 1,
        "non_utf8_text": 1,
        "bad_json": 1,
        "missing_image": 1,
        "duplicate_key": 2,
        "truncated_tar": 1,
        "unreadable_shard": 1,
    }
    assert {k: totals[k] for k in expected} == expected


def test_oversized_image_guard_uses_configured_limit(tmp_path):
    path = tmp_path / "big-000000.tar"
    with tarfile.open(path, "w") as tar:
        good(tar, "a", 1)
    counters = SampleCounters(max_workers=0)
    assert list(iter_samples([str(path)], project_layout(), counters, max_image_pixels=100)) == []
    assert counters.totals()["image_too_large"] == 1


def test_loader_reports_skips_per_epoch(bad_corpus):
    from captiondata.config import DataConfig, MixConfig
    from captiondata.loader import CaptionLoader

    cfg = DataConfig(builder="none", train_shards="::".join(bad_corpus[:2]), num_workers=2, shuffle_buffer=0)
    loader = CaptionLoader(cfg, MixConfig(p=1.0), batch_size=2, drop_last=False)
    keys = sorted(k for batch in loader for k in batch["key"])
    stats = loader.epoch_stats()
    assert keys == ["ok1", "ok2", "ok3", "t1"]
    assert stats["samples"] == 4
    assert stats["skipped"]["truncated_tar"] == 1 and stats["skipped"]["duplicate_key"] == 2
    assert stats["skipped_total"] == 12  # the corpus minus the missing shard
    list(loader)  # a second epoch starts from zero
    assert loader.epoch_stats()["skipped_total"] == 12


def test_layout_with_no_caption_members_counts_missing_caption(tmp_path):
    path = tmp_path / "x-000000.tar"
    with tarfile.open(path, "w") as tar:
        good(tar, "a", 1)
    counters = SampleCounters(max_workers=0)
    layout = CaptionLayout(
        original=__import__("captiondata.config", fromlist=["CaptionField"]).CaptionField("caption"), recaptions=[]
    )
    assert list(iter_samples([str(path)], layout, counters)) == []
    assert counters.totals()["missing_caption"] == 1
