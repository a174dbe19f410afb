"""train_clip.train end to end: the CLIPA two-stage recipe, logs, export, CaptionLoader glue, refusals."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import open_clip
import pytest
import torch
from conftest import make_records
from train_helpers import synthetic_factory

from captiondata.config import DataConfig, MixConfig
from harness_infra.atomic import atomic_torch_save
from harness_infra.errors import ConfigError
from train_clip.config import ClipModelConfig, StageConfig, TrainConfig
from train_clip.train import train
from training import checkpoint as ckpt

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
METRIC_KEYS = {"step", "samples_seen", "loss", "lr", "samples_per_s", "logit_scale"}


def micro(**kw) -> ClipModelConfig:
    """The micro test model."""
    return ClipModelConfig(name="TestCLIP-micro", inline=MICRO, **kw)


def quick(stages, **kw) -> TrainConfig:
    """A fast CPU training config."""
    defaults = dict(threads=1, log_every=2, progress_bar=False, weight_decay=0.0)
    return TrainConfig(stages=stages, **{**defaults, **kw})


def file_digests(root: str) -> dict:
    """sha256 of every file under root, by relative path."""
    digests = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digests[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def read_jsonl(path) -> list:
    """Records of a jsonl file."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def clipa_run(tmp_path_factory):
    """Two stages on learnable synthetic pairs: 32 px pre-training, then 48 px from stage 1's weights."""
    out_dir = str(tmp_path_factory.mktemp("clipa"))
    cfg = quick(
        [
            StageConfig(image_size=32, samples=1280, batch_size=32, lr=2e-3, warmup_steps=4),
            StageConfig(image_size=48, samples=128, batch_size=32, lr=2e-4),
        ],
        checkpoint_every_steps=20,
    )
    return train(micro(), cfg, None, None, out_dir, loader_factory=synthetic_factory(320, seed=0))


def test_clipa_run_trains_through_both_stages_and_learns(clipa_run):
    assert (clipa_run.steps, clipa_run.samples_seen, clipa_run.global_batch) == (44, 1408, [32, 32])
    metrics = read_jsonl(os.path.join(clipa_run.out_dir, "metrics.jsonl"))
    assert all(METRIC_KEYS <= set(m) for m in metrics)
    assert [m["stage"] for m in metrics][-1] == 1 and metrics[-1]["step"] == 44
    assert metrics[-1]["loss"] == pytest.approx(clipa_run.final_loss)
    end_of_stage_1 = [m["loss"] for m in metrics if m["stage"] == 0][-1]
    assert end_of_stage_1 < 0.5 * metrics[0]["loss"], (metrics[0]["loss"], end_of_stage_1)
    assert clipa_run.final_loss < metrics[0]["loss"]
    assert max(m["lr"] for m in metrics if m["stage"] == 1) <= 2e-4


def test_epoch_summaries_and_tensorboard_are_written(clipa_run):
    epochs = read_jsonl(os.path.join(clipa_run.out_dir, "epochs.jsonl"))
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3, 4]
    assert all(e["global_batch"].startswith("32 (= 32 x 1 ranks x 1 accum)") and "skipped" in e for e in epochs)
    assert os.listdir(os.path.join(clipa_run.out_dir, "tensorboard"))
    with open(os.path.join(clipa_run.out_dir, "train_config.json")) as handle:
        assert json.load(handle)["global_batch"] == [32, 32]


def test_final_checkpoint_and_export_hold_the_same_weights_and_load_in_open_clip(clipa_run):
    payload = ckpt.load_checkpoint(clipa_run.checkpoint_path)
    assert payload["position"]["step"] == 44 and payload["position"]["stage"] == 1
    by_name, _, _ = open_clip.create_model_and_transforms("TestCLIP-micro", pretrained=clipa_run.export_path)
    by_dir, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clipa_run.export_dir}")
    assert by_dir.visual.image_size == (48, 48) and preprocess.transforms[0].size in (48, (48, 48))
    for name, value in payload["model"].items():
        assert torch.equal(by_dir.state_dict()[name], value), name
    assert torch.equal(by_name.visual.conv1.weight, payload["model"]["visual.conv1.weight"])


def test_resuming_a_finished_run_changes_nothing(clipa_run):
    cfg = quick(
        [
            StageConfig(image_size=32, samples=1280, batch_size=32, lr=2e-3, warmup_steps=4),
            StageConfig(image_size=48, samples=128, batch_size=32, lr=2e-4),
        ],
        resume="latest",
    )
    before = file_digests(clipa_run.out_dir)
    weights = ckpt.load_checkpoint(clipa_run.checkpoint_path)["model"]
    again = train(micro(), cfg, None, None, clipa_run.out_dir, loader_factory=synthetic_factory(320, seed=0))
    assert again.resumed_from == clipa_run.checkpoint_path and again.steps == 44
    assert again.final_loss == clipa_run.final_loss and again.checkpoint_path == clipa_run.checkpoint_path
    after = file_digests(clipa_run.out_dir)
    # the log is appended to, train_config.json records the latest invocation (resume = latest) and TensorBoard opens a
    # new (empty) events file per writer; every other file - checkpoints, export, metrics, epochs, the earlier events -
    # is byte for byte the finished run's, and nothing else is added
    rewritten = {"train.log", "train_config.json"}
    assert {k: v for k, v in before.items() if k not in rewritten} == {
        k: after.get(k) for k in before if k not in rewritten
    }
    assert all(k.startswith("tensorboard" + os.sep) for k in set(after) - set(before)), sorted(set(after) - set(before))
    resumed = ckpt.load_checkpoint(again.checkpoint_path)["model"]
    assert resumed.keys() == weights.keys() and all(torch.equal(resumed[k], weights[k]) for k in weights)


def test_caption_loader_glue_with_accumulation_and_checkpointing(shard_factory, tmp_path):
    spec = shard_factory(make_records(40), per_shard=10)
    data_cfg = DataConfig(builder="none", train_shards=spec, num_workers=0, shuffle_buffer=10)
    cfg = quick([StageConfig(image_size=32, samples=96, batch_size=8, lr=1e-3)], accum_steps=2, log_every=1)
    result = train(micro(grad_checkpointing=True), cfg, data_cfg, MixConfig(p=0.2), str(tmp_path / "run"))
    assert (result.steps, result.global_batch) == (6, [16])
    epochs = read_jsonl(tmp_path / "run" / "epochs.jsonl")
    assert epochs[0]["samples"] == 40 and epochs[0]["skipped_total"] == 0
    # p = 0.2 = probability of the ORIGINAL caption; 40 draws: a 99.9% binomial bound (+-0.208) that excludes 1 - p
    assert abs(epochs[0]["original_fraction"] - 0.2) <= 3.2905 * (0.2 * 0.8 / 40) ** 0.5, epochs[0]


def test_refusals(tmp_path):
    stage = StageConfig(image_size=32, samples=32, batch_size=8, lr=1e-3, global_batch_size=64)
    with pytest.raises(ConfigError, match=r"train.stages\[0\].global_batch_size"):
        train(micro(), quick([stage]), None, None, str(tmp_path / "a"), loader_factory=synthetic_factory(32))
    atomic_torch_save({"format": ckpt.FORMAT_VERSION}, ckpt.checkpoint_path(str(tmp_path / "b"), 1))
    with pytest.raises(ConfigError, match="train.resume"):
        train(
            micro(),
            quick([StageConfig(image_size=32, samples=32, batch_size=8)]),
            None,
            None,
            str(tmp_path / "b"),
            loader_factory=synthetic_factory(32),
        )


def test_a_resume_drops_a_torn_last_metrics_line_and_reports_the_count(tmp_path):
    cfg = quick([StageConfig(image_size=32, samples=128, batch_size=32, lr=1e-3)], log_every=1)
    first = train(micro(), cfg, None, None, str(tmp_path), loader_factory=synthetic_factory(128, seed=0))
    assert first.torn_jsonl_lines == {}
    metrics = tmp_path / "metrics.jsonl"
    logged = read_jsonl(metrics)
    with open(metrics, "a", encoding="utf-8") as handle:
        handle.write('{"step": 5, "samples_seen": 16')  # a power loss mid-append
    again = train(
        micro(),
        dataclasses.replace(cfg, resume="latest"),
        None,
        None,
        str(tmp_path),
        loader_factory=synthetic_factory(128, seed=0),
    )
    assert again.resumed_from == first.checkpoint_path and again.torn_jsonl_lines == {"metrics.jsonl": 1}
    assert read_jsonl(metrics) == logged and len(logged) == 4
