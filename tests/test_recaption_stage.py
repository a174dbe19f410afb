"""The recaption stage: same keys, images untouched, recaption + provenance per sample, failures counted and retried,
shards split over ranks, the precomputed parquet backend on the real schema, and the stage inside the runner."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from recaption_helpers import captions, members, provenance, tar_of, write_input

from captiondata.config import project_layout
from harness_infra.errors import ConfigError
from recaption.captioner import Caption, build_captioner
from recaption.config import PAPER_PROMPT, PrecomputedCaptions, RecaptionConfig
from recaption.shards import read_done
from recaption.stage import finish_split, recaption_data, recaption_split

PIXELS = 10**8


def hf_cfg(model: str, **kw) -> RecaptionConfig:
    return RecaptionConfig(name="llava", backend="hf", model=model, max_new_tokens=6, batch_size=3, num_workers=1, **kw)


def test_hf_recaptions_every_sample_and_leaves_the_rest_untouched(tmp_path, tiny_vlm):
    spec = write_input(str(tmp_path / "in"), 7, per_shard=3)
    stats = recaption_data({"train": spec}, str(tmp_path / "out"), hf_cfg(tiny_vlm), project_layout(), PIXELS)["train"]
    before, after = members(spec), members(str(tmp_path / "out" / "train-*.tar"))
    assert (
        sorted(after) == sorted(before)
        and stats["samples"] == 7
        and stats["with_recaption"] == 7
        and stats["failed_total"] == 0
    )
    for key, old in before.items():
        assert {
            k: v for k, v in after[key].items() if not k.startswith("llava.")
        } == old  # every input member byte-identical
        assert after[key]["llava.txt"].decode().strip()
    record = provenance(str(tmp_path / "out" / "train-*.tar"))[0]
    assert (
        record["captioner"] == f"hf:{tiny_vlm}"
        and record["prompt_used"] == PAPER_PROMPT
        and record["decoding"] == "greedy"
    )
    assert (
        len(record["weights_sha256"]) == 64
        and record["max_new_tokens"] == 6
        and record["status"] == "ok"
        and not record["conditioned_on_original"]
    )
    assert (
        stats["truncated"] + sum(1 for r in provenance(str(tmp_path / "out" / "train-*.tar")) if not r["truncated"])
        == 7
    )
    manifest = json.load(open(tmp_path / "out" / "train-manifest.json"))
    assert manifest["samples"] == 7 and [s["name"] for s in manifest["shards"]] == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]


def test_a_caption_equals_transformers_greedy_generate_on_the_same_image(tmp_path, tiny_vlm):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from captiondata.decode import decode_image

    spec = write_input(str(tmp_path / "in"), 2, per_shard=2)
    cfg = dataclasses.replace(hf_cfg(tiny_vlm), batch_size=1)
    recaption_data({"train": spec}, str(tmp_path / "out"), cfg, project_layout(), PIXELS)
    got = captions(str(tmp_path / "out" / "train-*.tar"))
    processor, model = AutoProcessor.from_pretrained(tiny_vlm), AutoModelForImageTextToText.from_pretrained(tiny_vlm)
    for key, sample in members(spec).items():
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PAPER_PROMPT}]}]
        inputs = processor(
            images=[decode_image(sample["jpg"], PIXELS)],
            text=[processor.apply_chat_template(messages, add_generation_prompt=True)],
            return_tensors="pt",
        )
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        assert got[key] == processor.tokenizer.decode(ids, skip_special_tokens=True).strip()


def test_conditioning_on_the_original_caption_is_recorded(tmp_path, tiny_vlm):
    spec = write_input(str(tmp_path / "in"), 2, per_shard=2)
    recaption_data(
        {"train": spec}, str(tmp_path / "out"), hf_cfg(tiny_vlm, condition_on_original=True), project_layout(), PIXELS
    )
    records = provenance(str(tmp_path / "out" / "train-*.tar"))
    assert all(
        r["conditioned_on_original"] and 'alt-text, which may be noisy or unrelated, is: "alt text' in r["prompt_used"]
        for r in records
    )


class Flaky:
    """A captioner that fails the keys it is told to, counting what it was asked (to prove retries redo only failures)."""

    def __init__(self, failing, reason="server_error"):
        self.failing, self.reason, self.asked = set(failing), reason, []
        self.identity = {"captioner": "flaky", "weights_sha256": None}

    def caption(self, items):
        self.asked.extend(i.key for i in items)
        return [
            Caption.failed(self.reason) if i.key in self.failing else Caption(f"caption of {i.key}", tokens=3)
            for i in items
        ]


def test_failures_are_counted_kept_and_retried_alone_on_the_next_run(tmp_path):
    spec = write_input(str(tmp_path / "in"), 6, per_shard=3)
    tar_of(
        {"z1.jpg": b"not a jpeg", "z1.txt": b"broken image", "z2.txt": b"no image at all"},
        str(tmp_path / "in" / "train-000002.tar"),
    )
    cfg, out = (
        RecaptionConfig(name="llava", backend="hf", model="x", batch_size=2, num_workers=0),
        str(tmp_path / "out"),
    )
    urls = sorted(glob.glob(spec))
    first = Flaky(failing={"s00001", "s00004"})

    def flaky_then_real(failing):
        def make(_cfg):
            return failing

        return make

    recaption_split(urls, out, "train", cfg, project_layout(), PIXELS, make_captioner=flaky_then_real(first))
    stats = finish_split(out, "train", len(urls), 1.0)
    assert stats["failed"] == {"server_error": 2} and stats["samples"] == 8 and stats["with_recaption"] == 6
    assert sorted(first.asked) == ["s00000", "s00001", "s00002", "s00003", "s00004", "s00005", "z1", "z2"]
    assert sorted(r["status"] for r in provenance(f"{out}/train-*.tar") if r["status"] != "ok") == [
        "server_error",
        "server_error",
    ]
    assert read_done(f"{out}/train-000000.tar")["failed_keys"] == ["s00001"]
    second = Flaky(failing=set())
    rewritten = recaption_split(
        urls, out, "train", cfg, project_layout(), PIXELS, make_captioner=flaky_then_real(second)
    )
    assert rewritten == 2 and sorted(second.asked) == ["s00001", "s00004"]  # only the failures, nothing twice
    assert captions(f"{out}/train-*.tar") == {
        k: f"caption of {k}" for k in ("s00000", "s00001", "s00002", "s00003", "s00004", "s00005", "z1", "z2")
    }
    assert finish_split(out, "train", len(urls), 1.0)["failed_total"] == 0
    assert (
        recaption_split(
            urls,
            out,
            "train",
            cfg,
            project_layout(),
            PIXELS,
            make_captioner=lambda c: pytest.fail("nothing is pending"),
        )
        == 0
    )


def test_permanent_failures_settle_and_a_repeated_failure_leaves_the_shard_identical(tmp_path):
    from harness_infra.atomic import file_sha256

    spec = write_input(str(tmp_path / "in"), 4, per_shard=4)
    urls, out = sorted(glob.glob(spec)), str(tmp_path / "out")
    cfg = RecaptionConfig(name="llava", backend="hf", model="x", batch_size=4, num_workers=0)
    permanent = Flaky(failing={"s00001"}, reason="over_length")
    recaption_split(urls, out, "train", cfg, project_layout(), PIXELS, make_captioner=lambda c: permanent)
    stats = finish_split(out, "train", 1, 1.0)
    assert stats["failed"] == {"over_length": 1} and stats["transient_failures"] == 0
    assert (
        recaption_split(
            urls, out, "train", cfg, project_layout(), PIXELS, make_captioner=lambda c: pytest.fail("settled")
        )
        == 0
    )
    transient_out = str(tmp_path / "transient")
    down = Flaky(failing={"s00002"}, reason="timeout")
    recaption_split(urls, transient_out, "train", cfg, project_layout(), PIXELS, make_captioner=lambda c: down)
    before = file_sha256(f"{transient_out}/train-000000.tar")
    still_down = Flaky(failing={"s00002"}, reason="timeout")
    assert (
        recaption_split(
            urls, transient_out, "train", cfg, project_layout(), PIXELS, make_captioner=lambda c: still_down
        )
        == 1
    )
    assert (
        still_down.asked == ["s00002"] and file_sha256(f"{transient_out}/train-000000.tar") == before
    )  # nothing changed, same bytes
    stats = finish_split(transient_out, "train", 1, 1.0)
    assert stats["with_recaption"] == 3 and stats["transient_failures"] == 1 and stats["samples"] == 4
    assert (
        stats["words_per_caption_mean"] == 3.0 and stats["truncated"] == 0
    )  # statistics over every sample, not the last pass


def test_the_hf_backend_fails_undecodable_images_alone(tmp_path, tiny_vlm):
    folder = tmp_path / "in"
    folder.mkdir()
    good = members(write_input(str(tmp_path / "good"), 1, per_shard=1))["s00000"]
    tar_of(
        {
            "a.jpg": good["jpg"],
            "a.txt": b"fine",
            "b.jpg": b"\xff\xd8 truncated",
            "b.txt": b"broken",
            "c.txt": b"no image",
        },
        str(folder / "train-0.tar"),
    )
    stats = recaption_data(
        {"train": str(folder / "train-*.tar")}, str(tmp_path / "out"), hf_cfg(tiny_vlm), project_layout(), PIXELS
    )["train"]
    assert stats["failed"] == {"undecodable_image": 2} and stats["with_recaption"] == 1
    assert sorted(members(str(tmp_path / "out" / "train-*.tar"))) == [
        "a",
        "b",
        "c",
    ]  # failed samples are kept, not dropped


def test_ranks_split_the_shards_and_together_equal_one_process(tmp_path):
    spec = write_input(str(tmp_path / "in"), 10, per_shard=2)
    urls = sorted(glob.glob(spec))
    cfg = RecaptionConfig(name="llava", backend="hf", model="x", batch_size=2, num_workers=0)
    asked = {}
    for rank in (0, 1):
        captioner = Flaky(failing=set())
        recaption_split(
            urls,
            str(tmp_path / "two"),
            "train",
            cfg,
            project_layout(),
            PIXELS,
            make_captioner=lambda c: captioner,
            shard_rank=rank,
            shard_world=2,
        )
        asked[rank] = sorted(captioner.asked)
    assert asked[0] == ["s00000", "s00001", "s00004", "s00005", "s00008", "s00009"] and asked[1] == [
        "s00002",
        "s00003",
        "s00006",
        "s00007",
    ]
    recaption_split(
        urls, str(tmp_path / "one"), "train", cfg, project_layout(), PIXELS, make_captioner=lambda c: Flaky(set())
    )
    assert (
        members(str(tmp_path / "two" / "train-*.tar")).keys() == members(str(tmp_path / "one" / "train-*.tar")).keys()
    )
    assert captions(str(tmp_path / "two" / "train-*.tar")) == captions(str(tmp_path / "one" / "train-*.tar"))


def write_release(path, rows) -> None:
    """A parquet file with Recap-DataComp-1B's columns."""
    columns = [
        "url",
        "re_caption",
        "org_caption",
        "sha256",
        "key",
        "re_clip_score",
        "org_clip_score",
        "re_length",
        "org_length",
    ]
    table = {c: [r.get(c) for r in rows] for c in columns}
    pq.write_table(pa.table(table), path)


@pytest.mark.parametrize("join_on", ["key", "sha256", "url"])
def test_precomputed_captions_join_by_key_sha256_or_url_and_count_misses(tmp_path, join_on):
    from conftest import jpeg_bytes

    from captiondata.records import Record
    from captiondata.writer import ShardWriter

    records = [
        Record(key=f"{i:09d}", image=jpeg_bytes(i), original=f"alt {i}", meta={"url": f"http://img/{i}.jpg"})
        for i in range(5)
    ]
    writer = ShardWriter(str(tmp_path / "in"), "train", max_count=5)
    writer.write_all(records)
    writer.close()
    # img2dataset keeps the url in KEY.json; the project layout writes it under meta, so add the top-level field here
    raw = members(str(tmp_path / "in" / "train-*.tar"))
    entries = {}
    for key, sample in raw.items():
        meta = json.loads(sample["json"])
        # img2dataset's sha256 (--compute_hash sha256) hashes the image as DOWNLOADED, before its re-encoding: other bytes
        downloaded = hashlib.sha256(f"the original download of {key}".encode()).hexdigest()
        entries.update(
            {
                f"{key}.jpg": sample["jpg"],
                f"{key}.txt": sample["txt"],
                f"{key}.json": json.dumps({**meta, "url": meta["meta"]["url"], "sha256": downloaded}).encode(),
            }
        )
    os.unlink(tmp_path / "in" / "train-000000.tar")
    tar_of(entries, str(tmp_path / "in" / "train-000000.tar"))
    rows = [
        {
            "key": f"{i:09d}",
            "url": f"http://img/{i}.jpg",
            "sha256": hashlib.sha256(f"the original download of {i:09d}".encode()).hexdigest(),
            "re_caption": f"a detailed recaption of image {i}",
            "org_caption": f"alt {i}",
        }
        for i in range(4)
    ]  # image 4 has no row
    write_release(tmp_path / "part-0.parquet", rows)
    cfg = RecaptionConfig(
        name="recap",
        backend="precomputed",
        precomputed=PrecomputedCaptions(parquet=[str(tmp_path / "*.parquet")], join_on=join_on),
    )
    stats = recaption_data(
        {"train": str(tmp_path / "in" / "train-*.tar")}, str(tmp_path / "out"), cfg, project_layout(), PIXELS
    )["train"]
    assert stats["failed"] == {"not_in_parquet": 1}
    assert captions(str(tmp_path / "out" / "train-*.tar"), "recap") == {
        f"{i:09d}": f"a detailed recaption of image {i}" for i in range(4)
    }


def test_a_sha256_join_on_shards_without_the_download_hash_is_refused_with_the_joins_that_work(tmp_path, shard_factory):
    from conftest import jpeg_bytes, make_records

    urls = shard_factory(make_records(4), per_shard=4)  # the project's own shards: no KEY.json sha256
    write_release(
        tmp_path / "p.parquet",
        [
            {"key": f"s{i:05d}", "re_caption": "x", "sha256": hashlib.sha256(jpeg_bytes(i)).hexdigest()}
            for i in range(4)
        ],
    )
    cfg = RecaptionConfig(
        name="recap",
        backend="precomputed",
        precomputed=PrecomputedCaptions(parquet=[str(tmp_path / "p.parquet")], join_on="sha256"),
    )
    with pytest.raises(ConfigError) as error:
        recaption_data({"train": urls}, str(tmp_path / "out"), cfg, project_layout(), PIXELS)
    assert (
        "\n" not in str(error.value)
        and "has no sha256 in its KEY.json" in str(error.value)
        and "join_on=url or join_on=key" in str(error.value)
    )


@pytest.mark.parametrize(
    "column,values,message",
    [
        ("re_caption", [1, 2], "holds int64, not strings"),
        ("re_caption", [["a"], ["b"]], r"holds list<\w+: string>, not strings"),
    ],
)
def test_a_caption_column_of_the_wrong_type_is_one_line(tmp_path, column, values, message):
    pq.write_table(pa.table({"key": ["a", "b"], column: values}), tmp_path / "p.parquet")
    with pytest.raises(ConfigError, match=message) as error:
        build_captioner(
            RecaptionConfig(
                backend="precomputed", precomputed=PrecomputedCaptions(parquet=[str(tmp_path / "p.parquet")])
            )
        )
    assert "\n" not in str(error.value) and "p.parquet" in str(error.value)


def test_a_file_that_is_not_parquet_is_one_line(tmp_path):
    (tmp_path / "p.parquet").write_bytes(b"key,re_caption\na,x\n")
    with pytest.raises(ConfigError, match="is not a readable parquet file") as error:
        build_captioner(
            RecaptionConfig(
                backend="precomputed", precomputed=PrecomputedCaptions(parquet=[str(tmp_path / "p.parquet")])
            )
        )
    assert "\n" not in str(error.value)


def test_duplicate_parquet_keys_are_counted_when_they_agree_and_refused_when_they_do_not(tmp_path):
    pq.write_table(pa.table({"key": ["a", "b", "a"], "re_caption": ["x", "y", "x"]}), tmp_path / "p1.parquet")
    pq.write_table(pa.table({"key": ["b"], "re_caption": ["y"]}), tmp_path / "p2.parquet")
    captioner = build_captioner(
        RecaptionConfig(backend="precomputed", precomputed=PrecomputedCaptions(parquet=[str(tmp_path / "p*.parquet")]))
    )
    assert captioner.duplicate_rows == 2 and captioner.table == {"a": "x", "b": "y"}
    pq.write_table(pa.table({"key": ["a", "a"], "re_caption": ["x", "z"]}), tmp_path / "p1.parquet")
    with pytest.raises(ConfigError, match="key 'a' has rows with different captions"):
        build_captioner(
            RecaptionConfig(
                backend="precomputed", precomputed=PrecomputedCaptions(parquet=[str(tmp_path / "p1.parquet")])
            )
        )
    pq.write_table(pa.table({"key": ["a"], "re_caption": ["x"]}), tmp_path / "p1.parquet")
    pq.write_table(pa.table({"key": ["a"], "re_caption": ["other"]}), tmp_path / "p2.parquet")
    with pytest.raises(ConfigError, match="has rows with different captions"):
        build_captioner(
            RecaptionConfig(
                backend="precomputed", precomputed=PrecomputedCaptions(parquet=[str(tmp_path / "p*.parquet")])
            )
        )


def test_precomputed_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="matches no file"):
        build_captioner(
            RecaptionConfig(
                backend="precomputed", precomputed=PrecomputedCaptions(parquet=[str(tmp_path / "none-*.parquet")])
            )
        )
    write_release(tmp_path / "p.parquet", [{"key": "a", "re_caption": "x"}])
    with pytest.raises(ConfigError, match="has no column 'caption'"):
        build_captioner(
            RecaptionConfig(
                backend="precomputed",
                precomputed=PrecomputedCaptions(parquet=[str(tmp_path / "p.parquet")], column="caption"),
            )
        )


@pytest.fixture
def without_vllm(monkeypatch):
    """vLLM made unimportable, installed or not (``sys.modules[name] = None`` is how Python blocks an import:
    ``importlib.util.find_spec`` then answers None), so the not-installed path is checked on every machine."""
    monkeypatch.setitem(sys.modules, "vllm", None)


def test_vllm_where_it_is_not_installed_is_a_clear_one_line_error(without_vllm):
    from recaption.backends.vllm import vllm_missing_reason

    assert "pip install vllm" in vllm_missing_reason()
    with pytest.raises(ConfigError) as info:
        build_captioner(RecaptionConfig(backend="vllm", model="llava-hf/llava-1.5-7b-hf"))
    assert "pip install vllm" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"name": "a b"}, "must be a non-empty member name"),
        ({"backend": "gpt"}, "recaption.backend='gpt' is unknown"),
        ({"model": ""}, "recaption.model must name"),
        ({"batch_size": 0}, "recaption.batch_size=0 must be positive"),
        ({"splits": ["dev"]}, "recaption.splits"),
        ({"backend": "rewrite", "model": "m", "prompt": "no placeholder"}, "must contain {original}"),
    ],
)
def test_bad_recaption_values_fail_with_one_line(kwargs, message):
    with pytest.raises(ConfigError) as info:
        RecaptionConfig(**{"model": "m", **kwargs})
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["+recaption=precomputed", "recaption.precomputed.parquet=[/nope/*.parquet]"],
            "'/nope/*.parquet' matches no file",
        ),
        (["+recaption=vllm"], "pip install vllm"),
    ],
)
def test_a_captioner_that_cannot_run_fails_before_the_data_stage(tmp_path, overrides, message, without_vllm):
    from pipeline.overrides import compose_config

    with pytest.raises(ConfigError) as info:
        compose_config(
            ["+experiment=clip_smoke", *overrides, "run.stages=[data,recaption]", f"run.out_root={tmp_path}"]
        )
    assert message in str(info.value) and not os.listdir(tmp_path)  # nothing built, no stage folder left behind


def test_the_split_manifest_lists_every_output_shard_with_its_count_and_hash(tmp_path):
    from harness_infra.atomic import file_sha256
    from recaption.stage import load_manifest

    spec = write_input(str(tmp_path / "in"), 5, per_shard=2)
    urls, out = sorted(glob.glob(spec)), str(tmp_path / "out")
    cfg = RecaptionConfig(name="llava", backend="hf", model="x", batch_size=2, num_workers=0)
    recaption_split(urls, out, "train", cfg, project_layout(), PIXELS, make_captioner=lambda c: Flaky(set()))
    finish_split(out, "train", len(urls), 1.0)
    manifest = load_manifest(out, "train")
    assert manifest["prefix"] == "train" and manifest["samples"] == 5
    assert manifest["shards"] == [
        {
            "name": f"train-{i:06d}.tar",
            "count": n,
            "bytes": os.path.getsize(f"{out}/train-{i:06d}.tar"),
            "sha256": file_sha256(f"{out}/train-{i:06d}.tar"),
        }
        for i, n in enumerate((2, 2, 1))
    ]


class Sizes(Flaky):
    """Records the size of every image it is asked to caption."""

    def __init__(self):
        super().__init__(failing=set())
        self.sizes = {}

    def caption(self, items):
        self.sizes.update({i.key: i.image.size for i in items})
        return super().caption(items)


def exif_rotated_jpeg(width: int, height: int) -> bytes:
    """A width x height JPEG whose EXIF orientation (6: rotate 90 degrees clockwise) makes it height x width upright."""
    import io

    from PIL import Image

    image = Image.new("RGB", (width, height), (200, 30, 30))
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("exif_transpose, expected", [(None, (20, 40)), (True, (20, 40)), (False, (40, 20))])
def test_recaption_data_applies_the_exif_orientation_unless_told_not_to(tmp_path, exif_transpose, expected):
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    tar_of({"a.jpg": exif_rotated_jpeg(40, 20), "a.txt": b"a red block"}, str(folder / "train-000000.tar"))
    captioner = Sizes()
    cfg = RecaptionConfig(name="llava", backend="hf", model="x", batch_size=2, num_workers=0)
    kwargs = {} if exif_transpose is None else {"exif_transpose": exif_transpose}  # None: the default
    started = time.perf_counter()
    stats = recaption_data(
        {"train": str(folder / "train-*.tar")},
        str(tmp_path / "out"),
        cfg,
        project_layout(),
        PIXELS,
        make_captioner=lambda c: captioner,
        **kwargs,
    )["train"]
    wall = time.perf_counter() - started
    assert captioner.sizes == {"a": expected}
    assert (
        stats["seconds"] <= round(wall, 2) + 0.01 and stats["images_per_s"] >= 1 / wall
    )  # one image in this run's own time
    assert captions(str(tmp_path / "out" / "train-*.tar")) == {"a": "caption of a"}


def test_waiting_for_a_split_that_never_finishes_times_out_naming_it(tmp_path):
    from recaption.stage import wait_for_split

    started = __import__("time").monotonic()
    with pytest.raises(TimeoutError, match=rf"recaption of train in {tmp_path} was not completed .* within 0 s"):
        wait_for_split(str(tmp_path), "train", 2, timeout_s=0.2)
    assert __import__("time").monotonic() - started < 5


def test_an_unknown_failure_reason_is_a_value_error_naming_the_known_ones():
    from recaption.captioner import FAILURE_REASONS

    assert Caption.failed("timeout").reason == "timeout"
    with pytest.raises(ValueError, match=rf"unknown caption failure reason 'oops': one of {FAILURE_REASONS[0]}"):
        Caption.failed("oops")


def test_split_statistics_of_hand_made_completion_records():
    from recaption.stage import split_statistics

    def done(samples, failed, histogram, vocabulary, captioned, tokens, truncated=0, transient=(), skipped=None):
        record = {
            "samples": samples,
            "failed": failed,
            "word_histogram": histogram,
            "vocabulary": vocabulary,
            "captioned_this_pass": captioned,
            "tokens": tokens,
            "truncated": truncated,
            "transient_keys": list(transient),
        }
        return record if skipped is None else {**record, "input_skipped": skipped}

    dones = [
        done(5, {"empty_output": 1}, {"3": 2, "5": 2}, ["a", "b"], 4, 40, truncated=1, skipped={"truncated_tar": 2}),
        done(
            4,
            {"timeout": 2, "empty_output": 1},
            {"4": 1},
            ["b", "c", "d"],
            0,
            0,
            transient=("k1", "k2"),
            skipped={"truncated_tar": 1, "duplicate_key": 3},
        ),
        done(2, {}, {"9": 1, "3": 1}, ["e"], 2, 20),
    ]  # an old record without input_skipped
    stats = split_statistics(dones, 2.0)
    # captions: 3,3,5,5 | 4 | 9,3 -> sorted 3,3,3,4,5,5,9: mean 32 / 7, median (4th of 7) 4
    assert stats == {
        "shards": 3,
        "samples": 11,
        "with_recaption": 7,
        "failed": {"empty_output": 2, "timeout": 2},
        "failed_total": 4,
        "transient_failures": 2,
        "input_skipped": {"truncated_tar": 3, "duplicate_key": 3},
        "empty": 2,
        "truncated": 1,
        "words_per_caption_mean": 32 / 7,
        "words_per_caption_median": 4,
        "distinct_words": 5,
        "generated_this_run": 6,
        "images_per_s": 3.0,
        "tokens_per_s": 30.0,
        "seconds": 2.0,
    }
    even = split_statistics([done(2, {}, {"2": 1, "6": 1}, [], 0, 0)], 0.0)
    assert even["words_per_caption_median"] == 2  # the lower middle of an even count
    assert even["images_per_s"] is None and even["tokens_per_s"] is None and even["empty"] == 0
    nothing = split_statistics([done(1, {"undecodable_image": 1}, {}, [], 0, 0)], 0.004)
    assert nothing["words_per_caption_mean"] is None and nothing["words_per_caption_median"] is None
    assert nothing["images_per_s"] == 0.0 and nothing["tokens_per_s"] is None and nothing["seconds"] == 0.0
    timed = split_statistics([done(1, {}, {"1": 1}, ["x"], 1, 7)], 0.125)
    assert timed["seconds"] == 0.12 and timed["tokens_per_s"] == 56.0  # seconds rounded to 2 decimals for the record
    untimed = split_statistics([done(1, {}, {"1": 1}, ["x"], 1, 7)], 0.0)  # tokens, but no time measured
    assert untimed["images_per_s"] is None and untimed["tokens_per_s"] is None


def test_a_shard_with_transient_failures_is_pending_unless_retries_are_off():
    from recaption.stage import pending

    failed, settled = {"transient_keys": ["a"]}, {"transient_keys": []}
    assert pending(None) and pending(failed) and not pending(settled)
    assert not pending(failed, retry_failed=False) and pending(None, retry_failed=False)


def test_clearing_a_shards_partials_removes_its_own_temporary_files_only(tmp_path):
    from harness_infra.atomic import TMP_PREFIX
    from recaption.stage import clear_shard_partials

    mine = [f"{TMP_PREFIX}x1train-000001.tar", f"{TMP_PREFIX}x2train-000001.done.json"]
    others = [
        f"{TMP_PREFIX}x3train-000010.tar",
        f"{TMP_PREFIX}x4val-000001.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    for name in mine + others:
        (tmp_path / name).write_bytes(b"x")
    clear_shard_partials(str(tmp_path / "train-000001.tar"))
    assert sorted(os.listdir(tmp_path)) == sorted(others)


def test_with_retry_failed_false_a_transient_failure_stays_as_it_is(tmp_path):
    spec = write_input(str(tmp_path / "in"), 3, per_shard=3)
    urls, out = sorted(glob.glob(spec)), str(tmp_path / "out")
    cfg = RecaptionConfig(name="llava", backend="hf", model="x", batch_size=3, num_workers=0, retry_failed=False)
    recaption_split(
        urls, out, "train", cfg, project_layout(), PIXELS, make_captioner=lambda c: Flaky(failing={"s00001"})
    )
    assert (
        recaption_split(
            urls, out, "train", cfg, project_layout(), PIXELS, make_captioner=lambda c: pytest.fail("not retried")
        )
        == 0
    )
    assert read_done(f"{out}/train-000000.tar")["transient_keys"] == ["s00001"]
