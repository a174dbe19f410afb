"""Evaluation data sets: image folders, CLIP_benchmark webdataset layouts, project shards, caption folders."""

from __future__ import annotations

import os

import pytest
from conftest import require_real
from eval_helpers import (
    caption_records,
    write_caption_folder,
    write_cb_classification,
    write_cb_retrieval,
    write_image_folder,
    write_project_shards,
)

from evals.tasks.config import ZeroShotTaskConfig
from evals.tasks.datasets import (
    caption_folder,
    clip_benchmark_wds,
    evenly_spaced,
    flickr8k,
    image_folder,
    open_eval_dataset,
    project_shards,
)
from harness_infra.errors import ConfigError


def test_image_folder_order_labels_and_fingerprint(tmp_path):
    root = write_image_folder(str(tmp_path / "f"), ["b_cls", "a_cls"], 3)
    data = image_folder(root, "test")
    assert data.classes == ["a_cls", "b_cls"] and data.targets == [0, 0, 0, 1, 1, 1]
    image, label = data[4]
    assert image.mode == "RGB" and label == 1
    before = data.fingerprint
    assert image_folder(root, "test").fingerprint == before
    with open(os.path.join(root, "test", "a_cls", "0000.jpg"), "ab") as handle:
        handle.write(b"\0")  # size change -> new fingerprint
    assert image_folder(root, "test").fingerprint != before


def test_max_samples_is_an_evenly_spaced_subset(tmp_path):
    assert evenly_spaced(10, 4).tolist() == [0, 3, 6, 9]
    assert evenly_spaced(3, None).tolist() == [0, 1, 2]
    data = image_folder(write_image_folder(str(tmp_path), ["a", "b", "c"], 4), "test", max_samples=3)
    assert data.targets == [0, 1, 2]  # every class represented, unlike the first 3 files
    assert data.fingerprint != image_folder(str(tmp_path), "test").fingerprint


def test_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        image_folder(str(tmp_path / "nope"), "test")


def test_clip_benchmark_classification_layout(tmp_path):
    root = write_cb_classification(str(tmp_path), [2, 0, 1] * 5, ["cat", "dog", "eel"], ["a photo of a {c}."])
    data = clip_benchmark_wds(root, "test")
    assert data.classes == ["cat", "dog", "eel"] and data.templates == ["a photo of a {c}."]
    items = list(data)
    assert [label for _, label in items] == [2, 0, 1] * 5 and len(data.shards) == 3
    assert len(list(clip_benchmark_wds(root, "test", max_samples=4))) == 4


def test_clip_benchmark_retrieval_layout(tmp_path):
    captions = [["one caption"], ["first line", "second line"], ["a", "b", "c"]]
    data = clip_benchmark_wds(write_cb_retrieval(str(tmp_path), captions, per_shard=2), "test", kind="retrieval")
    assert [c for _, c in data] == captions


def test_project_shards_yield_references(tmp_path):
    records = caption_records(7, references_per_image=2)
    records[3].references = []  # no references: the original caption stands in
    spec = write_project_shards(str(tmp_path), records, per_shard=3)
    data = project_shards(spec, name="proj")
    items = list(data)
    assert len(items) == 7 and len(data.shards) == 3
    assert items[0][1] == ["reference caption 0 of image 0", "reference caption 1 of image 0"]
    assert items[3][1] == ["photo 3"]


def test_caption_folder_pairs_images_and_captions(tmp_path):
    root = write_caption_folder(str(tmp_path), ["a long caption   with\nwhitespace", "another one"])
    data = caption_folder(root)
    assert data.targets == [["a long caption with whitespace"], ["another one"]]


def test_flickr8k_raw_layout(tmp_path):
    os.makedirs(tmp_path / "images")
    write_caption_folder(str(tmp_path / "src"), ["x", "y"])
    for i in range(2):
        os.replace(tmp_path / "src" / "image" / f"{i:04d}.jpg", tmp_path / "images" / f"im{i}.jpg")
    (tmp_path / "Flickr8k.token.txt").write_text(
        "im0.jpg#0\tA dog .\nim0.jpg#1\tA cat .\nim1.jpg#0\tA bird .\nghost.jpg#0\tNo image\n"
    )
    (tmp_path / "Flickr_8k.testImages.txt").write_text("im1.jpg\nim0.jpg\nghost.jpg\n")
    data = flickr8k(str(tmp_path), "test")
    assert data.targets == [["A bird ."], ["A dog .", "A cat ."]]


def test_build_dataset_from_task_config(tmp_path, monkeypatch):
    monkeypatch.setenv("RECAP_DATA_ROOT", str(tmp_path))
    write_image_folder(str(tmp_path / "tiny"), ["x", "y"], 2)
    data = open_eval_dataset(ZeroShotTaskConfig(name="t", path="tiny", templates="photo"))
    assert len(data) == 4 and data.classes == ["x", "y"] and data.templates == ["a photo of a {c}."]
    data = open_eval_dataset(ZeroShotTaskConfig(name="t", path="tiny", classnames="imagenet"))
    assert len(data.classes) == 1000 and len(data.templates) == 80  # open_clip's ImageNet names and templates


def test_real_cifar10_folder_is_read_through_the_data_root(data_root):
    root = os.path.join(data_root, "cifar10")
    require_real(root)
    data = image_folder(root, "test")
    assert len(data) == 10000 and len(data.classes) == 10
