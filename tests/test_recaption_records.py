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
    assert done_path(str(tmp_path / "shard")) == str(tmp_path / "shard.done.json")  # a name without .tar keeps it whole
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


def _split(folder, out, captioner, batch_size=4):
    cfg = RecaptionConfig(name="llava", backend="hf", model="x", batch_size=batch_size, num_workers=0)
    urls = sorted(glob.glob(str(folder / "*.tar")))
    return recaption_split(urls, out, "train", cfg, project_layout(), PIXELS, make_captioner=lambda c: captioner)


def test_a_retry_redoes_each_transient_failure_in_its_batch_and_keeps_a_repeated_one_as_it_was(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    tar_of(
        {f"{k}.{s}": jpeg() if s == "jpg" else k.encode() for k in "abcd" for s in ("jpg", "txt")},
        str(folder / "train-000000.tar"),
    )
    out = str(tmp_path / "out")
    first = {
        "a": Caption.failed("server_error"),
        "b": Caption.failed("timeout"),
        "c": Caption("c one"),
        "d": Caption("d one"),
    }
    _split(folder, out, Scripted(first))
    shard = f"{out}/train-000000.tar"
    assert read_done(shard)["transient_keys"] == ["a", "b"] and read_done(shard)["retried"] is False
    # tamper with the finished shard as a crash or a hand edit could: a's provenance dated, a stale caption beside b's
    # failure, c's caption gone although its provenance says "ok"
    old = members(shard)
    dated = json.loads(old["a"]["llava.json"])
    dated["created"] = "2000-01-01T00:00:00Z"
    old["a"]["llava.json"] = json.dumps(dated, sort_keys=True).encode()
    old["b"]["llava.txt"] = b"stale"
    del old["c"]["llava.txt"]
    tar_of({f"{k}.{s}": v for k in "abcd" for s, v in old[k].items()}, shard)
    second = Scripted({"a": Caption.failed("server_error"), "b": Caption.failed("server_error"), "c": Caption("c two")})
    assert _split(folder, out, second) == 1
    assert [i.key for i in second.items] == ["a", "b", "c"]  # the transient failures and the lost caption, not d
    now = members(shard)
    assert now["a"]["llava.json"] == old["a"]["llava.json"]  # failed again the same way: the old record, byte for byte
    assert json.loads(now["b"]["llava.json"])["status"] == "server_error" and "llava.txt" not in now["b"]
    assert (now["c"]["llava.txt"], now["d"]["llava.txt"]) == (b"c two", b"d one")
    record = read_done(shard)
    assert (record["retried"], record["samples"], record["captioned"]) == (True, 4, 2)
    assert (record["captioned_this_pass"], record["reused"]) == (1, 1)
    assert record["failed"] == {"server_error": 2} and record["transient_keys"] == ["a", "b"]
    assert not os.path.exists(retry_path(shard))


class Slow(Scripted):
    """A Scripted captioner that takes ``delay`` seconds per batch."""

    def __init__(self, answers, delay):
        super().__init__(answers)
        self.delay = delay

    def caption(self, items):
        import time

        time.sleep(self.delay)
        return super().caption(items)


def test_the_record_counts_every_sample_the_input_shard_lost_and_its_time_in_milliseconds(tmp_path):
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    entries = [("a.jpg", jpeg()), ("a.txt", b"a"), ("b.jpg", jpeg()), ("b.txt", b"b")]
    entries += [("a.jpg", jpeg())]  # key a again, later: a duplicate
    entries += [("d.1.jpg", jpeg()), ("d.2.jpg", jpeg())]  # two samples hidden under key d by the dots
    entries += [("e.jpg", jpeg()), ("e.txt", b"e" * 600)]
    path = str(folder / "train-000000.tar")
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = open(path, "rb").read()
    cut = raw.index(b"e" * 600) + 100  # inside e.txt's data: the tar ends mid-member
    with open(path, "wb") as handle:
        handle.write(raw[:cut])
    out = str(tmp_path / "out")
    started = time.perf_counter()
    _split(folder, out, Slow({"a": Caption("x y"), "b": Caption("z")}, delay=0.05))
    wall = time.perf_counter() - started
    record = read_done(f"{out}/train-000000.tar")
    assert record["samples"] == 2 and record["input_skipped"] == {
        "duplicate_key": 1,
        "dotted_key": 2,
        "truncated_tar": 1,
    }
    assert 0.05 <= record["seconds"] <= wall and record["seconds"] == round(record["seconds"], 3)
    clean = tmp_path / "clean"
    clean.mkdir()
    tar_of({"a.jpg": jpeg(), "a.txt": b"a"}, str(clean / "train-000000.tar"))
    _split(clean, str(tmp_path / "clean_out"), Scripted({"a": Caption("x")}))
    assert read_done(f"{tmp_path}/clean_out/train-000000.tar")["input_skipped"] == {}


class Batches(Scripted):
    """A Scripted captioner that answers every key with its own caption and records its batch sizes."""

    def __init__(self):
        super().__init__({})
        self.sizes = []

    def caption(self, items):
        self.sizes.append(len(items))
        self.items.extend(items)
        return [Caption(f"caption of {i.key}") for i in items]


def _seven(folder):
    folder.mkdir()
    tar_of(
        {f"k{n}.{s}": jpeg() if s == "jpg" else b"alt" for n in range(7) for s in ("jpg", "txt")},
        str(folder / "train-000000.tar"),
    )


def test_the_captioner_gets_batches_of_batch_size_and_decoding_threads_change_no_byte_but_the_dates(tmp_path):
    _seven(tmp_path / "in")
    outputs = {}
    for workers in (0, 2):
        captioner = Batches()
        cfg = RecaptionConfig(name="llava", backend="hf", model="x", batch_size=3, num_workers=workers)
        out = str(tmp_path / f"out{workers}")
        recaption_split(
            [str(tmp_path / "in" / "train-000000.tar")],
            out,
            "train",
            cfg,
            project_layout(),
            PIXELS,
            make_captioner=lambda c, captioner=captioner: captioner,
        )
        assert captioner.sizes == [3, 3, 1] and [i.image.size for i in captioner.items] == [(8, 8)] * 7
        got = members(f"{out}/train-*.tar")
        for sample in got.values():
            parsed = json.loads(sample["llava.json"])
            parsed.pop("created")
            sample["llava.json"] = parsed
        outputs[workers] = got
    assert outputs[0] == outputs[2] and len(outputs[0]) == 7


def test_a_shard_recaptioner_applies_the_exif_orientation_by_default_and_runs_without_progress(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    tar_of({"r.jpg": jpeg(6, 3, orientation=6), "r.txt": b"alt"}, str(folder / "train-000000.tar"))
    captioner = Batches()
    worker = ShardRecaptioner(
        captioner, RecaptionConfig(name="llava", backend="hf", model="x", num_workers=0), project_layout(), PIXELS
    )
    stats = worker.recaption_shard(str(folder / "train-000000.tar"), str(tmp_path / "out.tar"))  # no progress given
    assert stats.captioned == 1 and captioner.items[0].image.size == (3, 6)
    staged = Batches()
    recaption_split(
        [str(folder / "train-000000.tar")],
        str(tmp_path / "staged"),
        "train",
        RecaptionConfig(name="llava", backend="hf", model="x", num_workers=0),
        project_layout(),
        PIXELS,
        make_captioner=lambda c: staged,
    )
    assert staged.items[0].image.size == (3, 6)  # recaption_split's default too


def test_provenance_dates_are_utc_whatever_the_local_zone(tmp_path, monkeypatch):
    import calendar
    import time

    monkeypatch.setenv("TZ", "Asia/Kathmandu")  # UTC+05:45 all year
    time.tzset()
    try:
        _seven(tmp_path / "in")
        before = time.time()
        _split(tmp_path / "in", str(tmp_path / "out"), Batches())
        created = json.loads(members(f"{tmp_path}/out/train-*.tar")["k0"]["llava.json"])["created"]
        stamp = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
        assert before - 1 <= stamp <= time.time() + 1
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_split_clears_what_a_killed_writer_left_and_records_each_shards_source(tmp_path):
    from harness_infra.atomic import TMP_PREFIX

    _seven(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{TMP_PREFIX}dead1train-000000.tar").write_bytes(b"half a shard")
    _split(tmp_path / "in", str(out), Batches())
    assert not [n for n in os.listdir(out) if n.startswith(TMP_PREFIX)]
    assert read_done(str(out / "train-000000.tar"))["source"] == str(tmp_path / "in" / "train-000000.tar")
