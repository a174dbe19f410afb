"""recaption.shards' exactly-once bookkeeping written out by hand: the completion record's counts, each sample's
provenance member, the record paths, and one raw sample's decoding (issue 30: the recaption stage under mutation
testing)."""

from __future__ import annotations

import glob
import io
import json
import os
import re
from collections import Counter

from PIL import Image
from recaption_helpers import members, tar_of

from captiondata.config import project_layout
from recaption.captioner import Caption
from recaption.config import RecaptionConfig
from recaption.shards import (
    ShardRecaptioner,
    ShardStats,
    done_path,
    json_field,
    read_done,
    read_retry,
    retry_path,
    to_item,
)
from recaption.stage import recaption_split

PIXELS = 10**8


def jpeg(width=8, height=8, orientation=None) -> bytes:
    image = Image.new("RGB", (width, height), (10, 200, 40))
    buffer = io.BytesIO()
    if orientation is None:
        image.save(buffer, format="JPEG")
    else:
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


class Scripted:
    """Answers each key with a given Caption and records the items it was asked."""

    def __init__(self, answers):
        self.answers, self.items = answers, []
        self.identity = {"captioner": "scripted", "weights_sha256": "abc"}

    def caption(self, items):
        self.items.extend(items)
        return [self.answers[i.key] for i in items]


def test_the_completion_record_and_every_provenance_member_by_hand(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    tar_of(
        {
            "a.jpg": jpeg(),
            "a.txt": "un café".encode(),
            "b.jpg": jpeg(),
            "b.txt": b"b alt",
            "c.jpg": jpeg(),
            "c.txt": b"c alt",
            "d.jpg": jpeg(),
        },
        str(folder / "train-000000.tar"),
    )
    answers = {
        "a": Caption("Two Words", tokens=4),
        "b": Caption("one two three", tokens=6, truncated=True),
        "c": Caption.failed("server_error"),
        "d": Caption("Ünïcode  here", tokens=2),
    }
    captioner = Scripted(answers)
    cfg = RecaptionConfig(
        name="llava",
        backend="hf",
        model="x",
        batch_size=3,
        num_workers=0,
        condition_on_original=True,
        conditioned_prompt="Describe; alt-text: {original}",
    )
    out = str(tmp_path / "out")
    recaption_split(
        sorted(glob.glob(str(folder / "*.tar"))),
        out,
        "train",
        cfg,
        project_layout(),
        PIXELS,
        make_captioner=lambda c: captioner,
    )
    record = read_done(f"{out}/train-000000.tar")
    assert (record["samples"], record["captioned"], record["tokens"], record["truncated"]) == (4, 3, 12, 1)
    assert (
        record["failed"] == {"server_error": 1} and record["failed_keys"] == ["c"] and record["transient_keys"] == ["c"]
    )
    assert record["word_histogram"] == {"2": 2, "3": 1}
    assert record["vocabulary"] == ["here", "one", "three", "two", "words", "ünïcode"]
    assert (record["captioned_this_pass"], record["reused"], record["retried"]) == (3, 0, False)
    assert [i.original for i in captioner.items] == ["un café", "b alt", "c alt", None]
    provenance = {k: v["llava.json"] for k, v in members(f"{out}/train-*.tar").items()}
    for key, raw in provenance.items():
        parsed = json.loads(raw)
        assert raw == json.dumps(parsed, sort_keys=True, ensure_ascii=False).encode("utf-8")  # sorted keys, UTF-8 text
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", parsed.pop("created"))
        caption = answers[key]
        original = {"a": "un café", "b": "b alt", "c": "c alt"}.get(key)
        assert parsed == {
            "captioner": "scripted",
            "weights_sha256": "abc",
            "tokens": caption.tokens,
            "truncated": caption.truncated,
            "prompt_used": f"Describe; alt-text: {original}" if original else cfg.prompt,
            "conditioned_on_original": original is not None,
            "status": "ok" if caption.text else "server_error",
        }
    assert "café".encode() in provenance["a"]  # not escaped to \\u00e9


def test_a_sample_counts_as_failed_without_an_ok_status_or_without_its_caption():
    worker = ShardRecaptioner(
        Scripted({}), RecaptionConfig(name="llava", backend="hf", model="x", num_workers=0), project_layout()
    )
    stats = ShardStats()
    ok = json.dumps({"status": "ok", "tokens": None}).encode()
    samples = [
        {"__key__": "never"},  # never captioned: no provenance
        {"__key__": "lost", "llava.json": ok},  # status ok but the caption member is gone
        {"__key__": "fine", "llava.json": ok, "llava.txt": b"a b"},
    ]
    for raw in samples:
        worker.count(raw, stats, Counter(), set())
    assert (
        stats.failed == {"generation_error": 2}
        and stats.failed_keys == ["never", "lost"]
        and stats.transient_keys == ["never", "lost"]
    )
    assert (stats.samples, stats.captioned, stats.tokens, stats.truncated) == (3, 1, 0, 0)


def test_record_paths_and_records_need_their_shard(tmp_path):
    shard = str(tmp_path / "train-000003.tar")
    assert done_path(shard) == str(tmp_path / "train-000003.done.json")
    assert retry_path(shard) == str(tmp_path / "train-000003.retry.json")
    with open(done_path(shard), "w") as handle:
        json.dump({"samples": 1}, handle)
    with open(retry_path(shard), "w") as handle:
        json.dump({"samples": 2}, handle)
    assert read_done(shard) is None and read_retry(shard) is None  # a record without its shard is not a finished shard
    tar_of({"a.txt": b"x"}, shard)
    assert read_done(shard) == {"samples": 1} and read_retry(shard) == {"samples": 2}
    os.unlink(done_path(shard))
    assert read_done(shard) is None


def test_one_raw_sample_decodes_to_its_item():
    raw = {
        "__key__": "k",
        "jpg": jpeg(6, 3, orientation=6),
        "txt": b"alt text",
        "json": json.dumps({"url": "http://x/y.jpg", "sha256": 7}).encode(),
    }
    item = to_item(raw, project_layout(), PIXELS)
    assert item.image.size == (3, 6)  # the EXIF orientation applied by default
    assert to_item(raw, project_layout(), PIXELS, exif_transpose=False).image.size == (6, 3)
    assert (item.key, item.original, item.image_bytes, item.url, item.source_sha256) == (
        "k",
        "alt text",
        raw["jpg"],
        "http://x/y.jpg",
        None,
    )
    assert json_field(raw, "sha256") is None and json_field({"__key__": "k"}, "url") is None
    bare = to_item({"__key__": "n", "txt": b"no image"}, project_layout(), PIXELS)
    assert bare.image is None and bare.image_bytes is None and bare.original == "no image"
    broken = to_item({"__key__": "b", "jpg": b"not a jpeg"}, project_layout(), PIXELS)
    assert broken.image is None and broken.image_bytes == b"not a jpeg" and broken.original is None
