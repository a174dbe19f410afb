"""LiT through the trainer: pretrained towers from model.tower, frozen-trunk feature cache, export, reload."""

from __future__ import annotations

import os

import open_clip
import pytest
import torch
from conftest import make_records
from safetensors.torch import load_file

import train_clip  # noqa: F401  (registers the RecapLiT configs and the timm FID Inception)
from captiondata.config import DataConfig, MixConfig
from captiondata.loader import CaptionLoader, ImageFeatures
from captiondata.reader import expand_shards
from captiondata.records import Record
from harness_infra.errors import ConfigError
from towers.pretrained import TowerSpec
from towers.text_trim import text_pad_id, trim_padding
from train_clip import frozen_features
from train_clip.config import ClipModelConfig, StageConfig, TrainConfig
from train_clip.frozen_features import FeatureInputCLIP, train_split_features, unfrozen_reason
from train_clip.models import create_clip, eval_transform, load_exported
from train_clip.train import train

SPEC = dict(image_size=75, embed_dim=32, context_length=16)


@pytest.fixture(autouse=True)
def pretrained_cache(tmp_path_factory, monkeypatch):
    """One converted-weights cache for the module (RECAP_CACHE_DIR/pretrained), outside the repository."""
    monkeypatch.setenv("RECAP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "recap-cache"))


def lit_model(name: str = "RecapLiT-test-train", **kw) -> ClipModelConfig:
    """FID Inception (locked) + MiniLM (trainable) at 75 px, context 16, embed 32."""
    return ClipModelConfig(name=name, tower=TowerSpec(**{**SPEC, **kw}))


def lit_recipe(cache_dir, samples: int = 48, **kw) -> TrainConfig:
    """One 75 px stage from frozen image features."""
    defaults = dict(
        threads=1,
        log_every=1,
        progress_bar=False,
        tensorboard=False,
        weight_decay=0.0,
        frozen_image_features=True,
        feature_cache_dir=str(cache_dir),
    )
    return TrainConfig(
        stages=[StageConfig(image_size=75, samples=samples, batch_size=8, lr=1e-3)], **{**defaults, **kw}
    )


def shard_data(shard_factory, n: int = 24, extra=()) -> DataConfig:
    """Shards of n small JPEG records (plus ``extra`` records) read with one in-process loader."""
    spec = shard_factory(make_records(n) + list(extra), per_shard=8)
    return DataConfig(builder="none", train_shards=spec, num_workers=0, shuffle_buffer=8)


def test_feature_input_model_equals_the_full_model(tmp_path):
    """FeatureInputCLIP(trunk(x), text) gives the model's own forward(x, text) outputs."""
    model = create_clip(lit_model(), 75, torch.device("cpu")).eval()
    images, tokens = (
        torch.randn(3, 3, 75, 75),
        open_clip.get_tokenizer("RecapLiT-test-train")(["a dog", "two cats on a sofa", "x"]),
    )
    with torch.no_grad():
        full = model(images, tokens)
        cached = FeatureInputCLIP(model)(model.visual.trunk(images), tokens)
    assert torch.allclose(cached["image_features"], full[0], atol=1e-6)
    assert torch.allclose(cached["text_features"], full[1], atol=1e-6) and torch.equal(
        cached["logit_scale"], full[2]
    )  # text: trimmed padding


def test_padding_trim_is_exact_for_the_hf_text_tower():
    model = create_clip(lit_model(), 75, torch.device("cpu")).eval()
    tokens = open_clip.get_tokenizer("RecapLiT-test-train")(["a dog runs", "a brown dog runs in the green park"])
    pad = text_pad_id(model)
    trimmed = trim_padding(tokens, pad)
    assert pad == 0 and trimmed.shape[1] < tokens.shape[1] and (trimmed[:, -1] != pad).any()
    with torch.no_grad():
        assert torch.allclose(model.encode_text(trimmed), model.encode_text(tokens), atol=1e-5)


def test_lit_run_trains_only_the_unlocked_parts_and_reuses_the_feature_cache(tmp_path, shard_factory, monkeypatch):
    data_cfg = shard_data(shard_factory)
    cache = tmp_path / "features"
    before = create_clip(lit_model(), 75, torch.device("cpu")).state_dict()
    result = train(lit_model(), lit_recipe(cache), data_cfg, MixConfig(p=0.5), str(tmp_path / "run1"))
    assert result.steps == 6 and result.final_loss is not None
    files = os.listdir(cache)
    assert len(files) == 3 and all(
        f.startswith(frozen_features.FEATURE_CACHE_KIND) for f in files
    )  # one entry per shard

    reloaded, _, _ = open_clip.create_model_and_transforms("RecapLiT-test-train", pretrained=result.export_path)
    after = reloaded.state_dict()
    from_dir = load_exported(result.export_dir)  # 'local-dir:': config, weights and the HF tokenizer from the folder
    assert all(torch.equal(from_dir.state_dict()[k], after[k]) for k in after)
    local_tokens = open_clip.get_tokenizer(f"local-dir:{result.export_dir}")(["a dog on the grass"])
    assert torch.equal(local_tokens, open_clip.get_tokenizer("RecapLiT-test-train")(["a dog on the grass"]))
    trunk = [k for k in before if k.startswith("visual.trunk.")]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)  # locked weights and BN statistics
    for name in (
        "visual.head.proj.weight",
        "text.proj.weight",
        "text.transformer.encoder.layer.0.attention.self.query.weight",
    ):
        assert not torch.equal(before[name], after[name]), name  # trainable parts moved

    def no_recompute(*args, **kwargs):
        raise AssertionError("features recomputed despite a cache entry")

    monkeypatch.setattr(frozen_features, "compute_trunk_features", no_recompute)
    again = train(lit_model(), lit_recipe(cache), data_cfg, MixConfig(p=0.5), str(tmp_path / "run2"))
    assert again.steps == 6 and sorted(os.listdir(cache)) == sorted(files)
    exported = load_file(again.export_path)  # open_clip_model.safetensors
    assert all(torch.equal(exported[k], after[k]) for k in after)  # same seed, same cached features: same weights


def test_the_cache_key_follows_weights_preprocessing_and_shards(tmp_path, shard_factory, monkeypatch):
    data_cfg = shard_data(shard_factory, n=24)
    model = create_clip(lit_model(), 75, torch.device("cpu"))
    key = frozen_features.feature_cache_key(model.visual.trunk, eval_transform(model), data_cfg)
    other_size = create_clip(lit_model("RecapLiT-test-96", image_size=96), 96, torch.device("cpu"))
    assert frozen_features.feature_cache_key(model.visual.trunk, eval_transform(other_size), data_cfg) != key
    weight = next(model.visual.trunk.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    assert frozen_features.feature_cache_key(model.visual.trunk, eval_transform(model), data_cfg) != key
    with torch.no_grad():
        weight.copy_(saved)
    assert frozen_features.feature_cache_key(model.visual.trunk, eval_transform(model), data_cfg) == key

    cache = str(tmp_path / "features")
    first = train_split_features(model, data_cfg, eval_transform(model), cache, 8, torch.device("cpu"))
    computed = []
    compute = frozen_features.compute_trunk_features
    monkeypatch.setattr(
        frozen_features, "compute_trunk_features", lambda t, urls, *a: computed.extend(urls) or compute(t, urls, *a)
    )
    urls = expand_shards(data_cfg.train_shards)
    os.utime(urls[1], ns=(1, 1))  # one shard rewritten: only its entry is recomputed
    again = train_split_features(model, data_cfg, eval_transform(model), cache, 8, torch.device("cpu"))
    assert computed == [urls[1]]
    before, after = list(first.rows()), list(again.rows())
    assert [(s, k) for s, k, _ in after] == [(s, k) for s, k, _ in before] and len(after) == 24
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(before, after))


def test_the_same_key_in_two_shards_is_two_samples_each_with_its_own_image(tmp_path, shard_factory):
    # user shards that restart their keys at 0: shard A's s00000 and shard B's s00000 are different images
    from dataclasses import replace

    from conftest import jpeg_bytes

    first = shard_factory(make_records(6), per_shard=6, prefix="a", folder="a")
    second = shard_factory(
        [replace(r, image=jpeg_bytes(100 + i), original=f"other image {i}") for i, r in enumerate(make_records(6))],
        per_shard=6,
        prefix="b",
        folder="b",
    )
    data_cfg = DataConfig(builder="none", train_shards=f"{first}::{second}", num_workers=0, shuffle_buffer=1)
    model = create_clip(lit_model(), 75, torch.device("cpu"))
    features = train_split_features(
        model, data_cfg, eval_transform(model), str(tmp_path / "cache"), 8, torch.device("cpu")
    )
    rows = list(features.rows())
    assert len(rows) == 12 and len({k for _, k, _ in rows}) == 6  # nothing dropped, nothing counted as duplicate
    urls = expand_shards(data_cfg.train_shards)
    own = {
        url: frozen_features.compute_trunk_features(
            model.visual.trunk, [url], data_cfg, eval_transform(model), 8, torch.device("cpu")
        )
        for url in urls
    }
    loader = CaptionLoader(
        data_cfg, MixConfig(p=1.0), tokenize=lambda texts: texts, batch_size=4, drop_last=False, image_features=features
    )
    seen = 0
    for batch in loader.iterate():
        for key, text, row in zip(batch["key"], batch["text"], batch["image"]):
            url = (
                urls[1] if text.startswith("other image") else urls[0]
            )  # the caption says which shard the sample is from
            expected = own[url]["features"][own[url]["keys"].index(key)]
            assert torch.allclose(row, expected, atol=1e-6), (key, url)
            seen += 1
    assert seen == 12 and loader.epoch_stats()["skipped"] == {}


def test_bad_images_are_counted_in_the_feature_pass_and_by_the_loader(tmp_path, shard_factory):
    corrupt = Record(key="bad00001", image=b"\xff\xd8 not a jpeg", original="alt", recaptions=["recap"])
    data_cfg = shard_data(shard_factory, n=15, extra=[corrupt])
    model = create_clip(lit_model(), 75, torch.device("cpu"))
    urls = expand_shards(data_cfg.train_shards)
    computed = frozen_features.compute_trunk_features(
        model.visual.trunk, urls, data_cfg, eval_transform(model), 8, torch.device("cpu")
    )
    assert computed["skipped"] == {"corrupt_image": 1}
    features = train_split_features(model, data_cfg, eval_transform(model), None, 8, torch.device("cpu"))
    assert len(features.keys) == 15 and "bad00001" not in features.index
    assert torch.allclose(features.features, computed["features"])
    loader = CaptionLoader(
        data_cfg,
        MixConfig(p=1.0),
        tokenize=lambda texts: texts,
        batch_size=4,
        drop_last=False,
        image_features=ImageFeatures(features.keys[:-1], features.features[:-1]),
    )
    batches = list(loader.iterate())
    stats = loader.epoch_stats()
    assert sum(len(b["key"]) for b in batches) == 14 and batches[0]["image"].shape[1] == 2048
    assert stats["skipped"] == {
        "no_image_feature": 2
    }  # the loader does not decode: the corrupt image has no feature row


def test_unlocked_trunks_live_batchnorm_and_other_image_sizes_are_refused(tmp_path, shard_factory):
    data_cfg = shard_data(shard_factory, n=8)
    with pytest.raises(ConfigError, match="trainable"):
        train(
            lit_model("RecapLiT-test-unlocked", image_unlocked_groups=1),
            lit_recipe(tmp_path / "f"),
            data_cfg,
            MixConfig(p=0.5),
            str(tmp_path / "a"),
        )
    unlocked_bn = create_clip(lit_model("RecapLiT-test-bn", image_freeze_bn_stats=False), 75, torch.device("cpu"))
    assert "BatchNorm" in unfrozen_reason(unlocked_bn)
    two_sizes = TrainConfig(
        stages=[
            StageConfig(image_size=75, samples=8, batch_size=8),
            StageConfig(image_size=64, samples=8, batch_size=8),
        ],
        threads=1,
        progress_bar=False,
        tensorboard=False,
    )
    with pytest.raises(ConfigError, match=r"train.stages\[1\].image_size=64 but model.tower.image_size=75"):
        train(lit_model(), two_sizes, data_cfg, MixConfig(p=0.5), str(tmp_path / "b"))
    assert not (tmp_path / "b" / "checkpoints").exists()  # refused before stage 0 trained, not at the switch


def test_tower_config_values_are_checked():
    with pytest.raises(ConfigError, match="model.precision"):
        ClipModelConfig(name="x", tower=TowerSpec(), precision="bf16")
    with pytest.raises(ConfigError, match="context_length"):
        ClipModelConfig(name="x", tower=TowerSpec(), context_length=77)
    assert ClipModelConfig(name="x", tower=dict(image_size=96)).tower.image_size == 96


def test_eval_trunk_cache_is_shared_by_models_with_the_same_locked_trunk(tmp_path, monkeypatch):
    """Two LiT models (same locked trunk, different heads): the second evaluation runs no image through the trunk."""
    from PIL import Image

    from evals.tasks import embeddings
    from evals.tasks.config import EvalConfig
    from evals.tasks.datasets import image_folder

    for label in ("cat", "dog"):
        os.makedirs(tmp_path / "images" / label)
        for i in range(3):
            Image.new("RGB", (20, 20), (80 * i, 60 if label == "cat" else 200, 30)).save(
                tmp_path / "images" / label / f"{i}.jpg"
            )
    data = image_folder(str(tmp_path / "images"))
    first = create_clip(lit_model(), 75, torch.device("cpu"), seed=0)
    second = create_clip(lit_model(), 75, torch.device("cpu"), seed=1)
    preprocess = eval_transform(first)
    cached = EvalConfig(batch_size=4, cache_dir=str(tmp_path / "cache"), trunk_feature_cache=True)
    plain = EvalConfig(batch_size=4, cache_dir=None)
    got, targets = embeddings.encode_images(first, preprocess, data, cached)
    want, want_targets = embeddings.encode_images(first, preprocess, data, plain)
    assert targets == want_targets == [0, 0, 0, 1, 1, 1] and torch.allclose(got, want, atol=1e-5)

    image_passes = []
    run_images = embeddings._run_images
    monkeypatch.setattr(embeddings, "_run_images", lambda *a, **k: image_passes.append(1) or run_images(*a, **k))
    got_second, _ = embeddings.encode_images(second, preprocess, data, cached)
    assert image_passes == []  # trunk features came from the cache
    assert not torch.allclose(got_second, got)
    assert torch.allclose(got_second, embeddings.encode_images(second, preprocess, data, plain)[0], atol=1e-5)


def test_eval_text_trimming_covers_the_hf_text_tower():
    from evals.tasks.config import EvalConfig
    from evals.tasks.embeddings import can_trim_text, encode_texts

    model = create_clip(lit_model(), 75, torch.device("cpu"))
    tokenizer = open_clip.get_tokenizer("RecapLiT-test-train")
    texts = ["a dog", "a brown dog runs through the green park", "two cats"]
    assert can_trim_text(model)
    trimmed, _ = encode_texts(model, tokenizer, texts, EvalConfig(batch_size=2, cache_dir=None))
    full, _ = encode_texts(model, tokenizer, texts, EvalConfig(batch_size=2, cache_dir=None, trim_text_padding=False))
    assert torch.allclose(trimmed, full, atol=1e-5)


def lit_ddp_worker(rank: int, port: int, shards: str, out_dir: str) -> None:
    """One of two gloo ranks of a LiT run from frozen features (each rank computes every other shard's entry)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    data_cfg = DataConfig(
        builder="none", train_shards=shards, num_workers=0, shuffle_buffer=8, resampled=True, epoch_samples=32
    )
    computed = []
    compute = frozen_features.compute_trunk_features
    frozen_features.compute_trunk_features = lambda t, urls, *a: (
        computed.extend(os.path.basename(u) for u in urls) or compute(t, urls, *a)
    )
    result = train(
        lit_model(),
        lit_recipe(os.path.join(out_dir, "features"), samples=32, device="cpu"),
        data_cfg,
        MixConfig(p=0.5),
        os.path.join(out_dir, "run"),
    )
    torch.save(
        {"steps": result.steps, "global_batch": result.global_batch, "computed": computed},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


def test_lit_from_frozen_features_under_ddp(tmp_path, shard_factory):
    import torch.multiprocessing as mp
    from conftest import free_port

    shards = shard_factory(make_records(24), per_shard=8)
    mp.start_processes(
        lit_ddp_worker, args=(free_port(), shards, str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 and ranks[0]["global_batch"] == [16]
    assert ranks[0]["computed"] == ["train-000000.tar", "train-000002.tar"] and ranks[1]["computed"] == [
        "train-000001.tar"
    ]
    assert len(os.listdir(tmp_path / "features")) == 3  # each shard computed once, by one rank, read by both


def test_cached_features_hold_one_shard_at_a_time(tmp_path, shard_factory, monkeypatch):
    # the bound of issue 15 item 5: the loader opens entries in shard order, so a process holds one shard's rows
    data_cfg = DataConfig(
        builder="none", train_shards=shard_factory(make_records(24), per_shard=8), num_workers=0, shuffle_buffer=4
    )
    model = create_clip(lit_model(), 75, torch.device("cpu"))
    store = train_split_features(
        model, data_cfg, eval_transform(model), str(tmp_path / "cache"), 8, torch.device("cpu")
    )
    opened = []
    original = type(store)._open

    def counting_open(self, shard):
        opened.append(shard)
        original(self, shard)
        assert self._rows.shape[0] == 8  # one shard's 8 rows, never the split's 24

    monkeypatch.setattr(type(store), "_open", counting_open)
    loader = CaptionLoader(data_cfg, MixConfig(p=1.0), tokenize=lambda texts: texts, batch_size=4, image_features=store)
    keys = [k for batch in loader.iterate() for k in batch["key"]]
    assert sorted(keys) == sorted(r.key for r in make_records(24)) and len(opened) == 3  # each shard opened once
