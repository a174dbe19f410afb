"""Caption layouts are configuration; shard specs accept paths, braces, globs, pipe:, file:// and fsspec URLs."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from conftest import jpeg_bytes, make_records

from captiondata.config import CaptionField, CaptionLayout, DataConfig, recap_datacomp_layout
from captiondata.reader import expand_shards, iter_samples
from harness_infra.errors import ConfigError


def write_img2dataset_shard(path, n: int) -> None:
    """A shard exactly as img2dataset writes Recap-DataComp-1B: .jpg, .txt = re_caption, .json with org_caption."""
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            key = f"{i:09d}"
            meta = {
                "url": f"http://example.com/{i}.jpg",
                "key": key,
                "status": "success",
                "org_caption": f"IMG_{i}.jpg",
                "re_clip_score": 0.3,
                "org_clip_score": 0.2,
                "width": 16,
                "height": 16,
            }
            for name, data in (
                (f"{key}.jpg", jpeg_bytes(i)),
                (f"{key}.txt", f"A detailed recaption {i}.".encode()),
                (f"{key}.json", json.dumps(meta).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_recap_datacomp_layout(tmp_path):
    path = tmp_path / "00000.tar"
    write_img2dataset_shard(path, 3)
    records = list(iter_samples(str(path), recap_datacomp_layout()))
    assert [(r.original, r.recaptions) for r in records] == [
        (f"IMG_{i}.jpg", [f"A detailed recaption {i}."]) for i in range(3)
    ]


def test_recap_datacomp_preset_via_config(tmp_path):
    path = tmp_path / "00000.tar"
    write_img2dataset_shard(path, 2)
    cfg = DataConfig(builder="none", train_shards=str(path), layout=recap_datacomp_layout())
    assert cfg.layout.original == CaptionField("json", "org_caption")
    assert next(iter_samples(cfg.shards("train"), cfg.layout)).original == "IMG_0.jpg"


def test_project_layout_and_several_recaptions(shard_factory):
    records = make_records(3)
    records[1].recaptions = ["first recaption", "second recaption"]
    spec = shard_factory(records, per_shard=5)
    got = list(iter_samples(spec, DataConfig(builder="none", train_shards=spec).layout))
    assert got[1].recaptions == ["first recaption", "second recaption"]
    assert got[0].references == ["reference 0 a", "reference 0 b"]


def test_recaptions_pooled_from_several_members(tmp_path):
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("a.jpg", jpeg_bytes(0)),
            ("a.txt", b"alt"),
            ("a.llava.txt", b"recap one"),
            ("a.json", json.dumps({"v2": {"re_caption": "recap two"}}).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    layout = CaptionLayout(
        original=CaptionField("txt"), recaptions=[CaptionField("llava.txt"), CaptionField("json", "v2.re_caption")]
    )
    (record,) = iter_samples(str(path), layout)
    assert (record.original, record.recaptions) == ("alt", ["recap one", "recap two"])


def test_shard_spec_forms(shard_factory, tmp_path):
    spec = shard_factory(make_records(30), per_shard=10)
    folder = spec.rsplit("/", 1)[0]
    assert len(expand_shards(spec)) == 3
    assert expand_shards(folder + "/train-{000000..000001}.tar") == [f"{folder}/train-00000{i}.tar" for i in range(2)]
    assert len(expand_shards(f"{folder}/train-000000.tar::{folder}/train-000002.tar")) == 2
    with pytest.raises(ConfigError, match="no shard matches"):
        expand_shards(str(tmp_path / "nothing-*.tar"))
    layout = DataConfig(builder="none", train_shards=spec).layout
    for url in (f"pipe:cat {folder}/train-000000.tar", f"file://{folder}/train-000000.tar"):
        assert [r.key for r in iter_samples([url], layout)] == [f"s{i:05d}" for i in range(10)]


def test_fsspec_url(shard_factory):
    from conftest import require_module

    fsspec = require_module("fsspec", "fsspec is a declared dependency: pip install -e .")
    spec = shard_factory(make_records(4), per_shard=10)
    data = open(expand_shards(spec)[0], "rb").read()
    with fsspec.open("memory://bucket/train-000000.tar", "wb") as handle:
        handle.write(data)
    layout = DataConfig(builder="none", train_shards=spec).layout
    assert len(list(iter_samples(["memory://bucket/train-000000.tar"], layout))) == 4
