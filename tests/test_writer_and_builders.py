"""Atomic shard writing, the Flickr8k builder on the real folder, and the build stage's skip/refuse rules."""

from __future__ import annotations

import json
import os

import pytest
from conftest import make_records, require_real

from captiondata.build import build_shards
from captiondata.config import DataConfig, project_layout
from captiondata.reader import iter_samples
from captiondata.writer import ShardWriter
from harness_infra.errors import ConfigError


def test_writer_is_atomic_and_writes_a_manifest(tmp_path):
    writer = ShardWriter(str(tmp_path), "train", max_count=4)
    writer.write_all(make_records(10))
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".tmp-")) == [
        "train-000000.tar",
        "train-000001.tar",
    ]
    assert any(name.startswith(".tmp-") for name in os.listdir(tmp_path))  # the third shard is still open
    manifest = writer.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["train-000000.tar", "train-000001.tar", "train-000002.tar", "train-manifest.json"]
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 2] and manifest["samples"] == 10
    assert json.load(open(tmp_path / "train-manifest.json")) == manifest
    assert oct(os.stat(tmp_path / "train-000000.tar").st_mode & 0o777) != "0o600"


def test_writer_crash_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(str(tmp_path), "train", max_count=100) as writer:
            writer.write_all(make_records(3))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_writer_refuses_to_overwrite(tmp_path):
    ShardWriter(str(tmp_path), "train").close()
    with pytest.raises(FileExistsError, match="already holds train shards"):
        ShardWriter(str(tmp_path), "train")
    ShardWriter(str(tmp_path), "train", overwrite=True).close()


def test_round_trip_keeps_every_field(tmp_path, shard_factory):
    records = make_records(3)
    records[2].original = None
    records[0].meta = {"label": 4, "note": "ü"}
    got = list(iter_samples(shard_factory(records), project_layout()))
    assert [(r.key, r.original, r.recaptions, r.references) for r in got] == [
        (r.key, r.original, r.recaptions, r.references) for r in records
    ]
    assert got[0].meta == {"label": 4, "note": "ü"}


@pytest.fixture
def flickr_root(data_root):
    root = os.path.join(data_root, "flickr8k")
    require_real(root)
    return root


def test_flickr8k_records_follow_the_proxy_definition(flickr_root):
    from captiondata.builders.flickr8k import flickr8k_records, read_captions, tidy

    captions = read_captions(flickr_root)
    assert sum(len(v) for v in captions.values()) == 40460
    test = list(flickr8k_records(flickr_root, "test"))
    assert len(test) == 1000
    for record in test[:50]:
        human = captions[record.meta["image"]]
        assert len(record.references) == 5
        assert record.original == tidy(min(human, key=lambda c: len(c.split())))
        assert all(ref in record.recaptions[0] for ref in record.references)
        assert record.meta["recap_is_proxy"] is True
    assert len(list(flickr8k_records(flickr_root, "val"))) == 1000


def test_flickr8k_build_skips_when_done_and_refuses_other_settings(flickr_root, tmp_path):
    cfg = DataConfig(
        name="flickr8k",
        builder="flickr8k",
        source=flickr_root,
        shard_dir=str(tmp_path),
        build_size=30,
        samples_per_shard=20,
    )
    info = build_shards(cfg)
    assert {k: v["samples"] for k, v in info["manifests"].items()} == {"train": 30, "val": 1000, "test": 1000}
    mtime = os.path.getmtime(tmp_path / "train-000000.tar")
    assert build_shards(cfg) == info and os.path.getmtime(tmp_path / "train-000000.tar") == mtime
    other = DataConfig(
        name="flickr8k",
        builder="flickr8k",
        source=flickr_root,
        shard_dir=str(tmp_path),
        build_size=31,
        samples_per_shard=20,
    )
    with pytest.raises(ConfigError, match="built with other settings"):
        build_shards(other)


def test_missing_flickr8k_folder_is_a_one_line_error(tmp_path):
    cfg = DataConfig(
        name="flickr8k", builder="flickr8k", source=str(tmp_path / "nope"), shard_dir=str(tmp_path / "out")
    )
    with pytest.raises(ConfigError, match="lacks Flickr8k.token.txt"):
        build_shards(cfg)
