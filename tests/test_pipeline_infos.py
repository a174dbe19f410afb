"""The typed stage outputs (``pipeline.infos``), the stage ordering declared on each stage, the family seam: markers
written before the typed outputs read back and write out with the same fields, stage keys equal the formulas they
replaced, a stage listed before one whose output it reads is a one-line error, and no stage module names a family."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest

from captiondata.config import REDUCTION_FIELDS
from harness_infra.errors import ConfigError
from harness_infra.stagecache import StageDir, content_hash, key_fields
from pipeline.infos import DataInfo, EvalInfo, FeaturesInfo, RecaptionInfo, SampleInfo, StageInfo, TablesInfo, TrainInfo
from pipeline.registry import RunContext, check_stage_list, stages

# markers as the stages wrote them before the typed outputs (field names and values of real runs)
OLD_MARKERS = {
    DataInfo: {
        "stage": "data",
        "hash": "1f2e",
        "fingerprint": "ab12",
        "samples": {"train": 160, "test": 40},
        "build_seconds": 3.5,
        "wall_time_s": 3.61,
    },
    RecaptionInfo: {
        "stage": "recaption",
        "hash": "9c",
        "fingerprint": "cd34",
        "member": "llava.txt",
        "splits": {"train": {"samples": 10, "with_recaption": 9, "failed": {"timeout": 1}}},
        "failed_total": 1,
        "transient_failures": 1,
        "wall_time_s": 12.0,
    },
    TrainInfo: {
        "stage": "train",
        "hash": "77",
        "out_dir": "/old/train/x-77",
        "checkpoint_path": "/old/ckpt.pt",
        "export_dir": "/old/export",
        "export_path": "/old/export/open_clip_pytorch_model.bin",
        "model_name": "tiny",
        "steps": 4,
        "samples_seen": 128,
        "global_batch": [32],
        "wall_time_s": 9.25,
        "samples_per_s": 40.0,
        "train_time_s": 3.2,
        "final_loss": None,
        "resumed_from": None,
        "resumed": [],
        "mixture": {"realised_original_fraction": 0.5},
    },
    FeaturesInfo: {
        "stage": "features",
        "hash": "5",
        "cache_dir": "/c",
        "images": 8,
        "texts": 24,
        "bytes": 1024,
        "bytes_per_million_images": 1.0e8,
        "x0_shape": [4, 8, 8],
        "text_dim": 384,
        "skipped": 0,
        "wall_time_s": 1.0,
    },
    SampleInfo: {
        "stage": "sample",
        "hash": "6",
        "images": 4,
        "grid": "/s/grid.png",
        "sampler": "ddpm",
        "steps": 10,
        "guidance_scale": 4.0,
        "seed": 0,
        "export_dir": "/e",
        "wall_time_s": 2.0,
    },
    EvalInfo: {
        "stage": "eval",
        "hash": "8",
        "records": ["/r/a.json"],
        "metrics": {"a": {"top1": 0.5}},
        "wall_time_s": 4.0,
    },
}


@pytest.mark.parametrize("kind", list(OLD_MARKERS), ids=lambda kind: kind.__name__)
def test_an_old_marker_reads_back_typed_and_writes_the_same_fields(kind):
    marker = OLD_MARKERS[kind]
    info = kind.from_json(marker)
    assert info.hash == marker["hash"] and info.wall_time_s == marker["wall_time_s"]
    assert info.to_json() == {k: v for k, v in marker.items() if k != "stage"}  # the marker adds "stage" itself
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.hash = "other"


def test_typed_fields_carry_the_marker_values_and_family_fields_stay_in_extra():
    train = TrainInfo.from_json(OLD_MARKERS[TrainInfo])
    assert (train.export_dir, train.samples_seen, train.global_batch, train.steps) == ("/old/export", 128, [32], 4)
    assert train.mixture == {"realised_original_fraction": 0.5} and train.resumed == []
    assert train.extra["model_name"] == "tiny" and "final_loss" in train.extra and train.extra["final_loss"] is None
    data = DataInfo.from_json(OLD_MARKERS[DataInfo])
    assert data.fingerprint == "ab12" and data.samples == {"train": 160, "test": 40} and data.shards is None
    # a field the stage did not set is absent, never null: the eval marker is written before publishing
    assert "published" not in EvalInfo(records=[], metrics={}).to_json() and TablesInfo(table=None).to_json() == {}


def test_every_stage_declares_its_output_type_and_only_registered_stages_to_follow():
    registry = stages()
    for name, stage in registry.items():
        assert issubclass(stage.output, StageInfo) and stage.output.STAGE == name
        assert set(stage.needs) | set(stage.after) <= set(registry) - {name}


def test_the_runner_writes_the_typed_output_into_the_marker_and_reads_it_back(tmp_path):
    from pipeline.overrides import compose_config
    from pipeline.runner import run_cached

    cfg, _ = compose_config(["+experiment=clip_smoke", f"run.out_root={tmp_path}"])
    built = DataInfo(fingerprint="f0", samples={"train": 3}, build_seconds=0.5)
    fake = dataclasses.replace(stages()["data"], run=lambda ctx, out_dir: built)
    first = run_cached(RunContext(cfg, {}, []), fake, "[1/1]")
    folder = StageDir(
        str(tmp_path), "data", cfg.data.name, {**stages()["data"].key(RunContext(cfg, {}, [])), "stage_version": 1}
    )
    marker = json.load(open(folder.marker))
    assert set(marker) == {"stage", "hash", "fingerprint", "samples", "build_seconds", "wall_time_s"}
    assert first == DataInfo(
        fingerprint="f0",
        samples={"train": 3},
        build_seconds=0.5,
        hash=folder.hash,
        out_dir=folder.path,
        wall_time_s=marker["wall_time_s"],
    )
    again = run_cached(
        RunContext(cfg, {}, []), dataclasses.replace(fake, run=lambda ctx, out_dir: pytest.fail("ran again")), "[1/1]"
    )
    assert again == first


@pytest.mark.parametrize(
    "names,late",
    [
        (["data", "train", "recaption"], "recaption"),
        (["data", "train", "features"], "features"),
        (["data", "features", "recaption"], "recaption"),
    ],
)
def test_a_stage_listed_before_one_whose_output_it_reads_is_a_one_line_error(names, late):
    with pytest.raises(ConfigError) as info:
        check_stage_list(names)
    text = str(info.value)
    assert text.startswith("run.stages: ") and f"{late} must come before it" in text and "\n" not in text
    check_stage_list(
        [n for n in names if n != late][:1] + [late] + [n for n in names if n != late][1:]
    )  # in order: fine


def recaption_cfg():
    from pipeline.overrides import compose_config

    cfg, _ = compose_config(["+experiment=clip_smoke", "+recaption=hf", "recaption.layout_mode=replace"])
    return cfg


def test_train_and_features_keys_equal_the_formulas_they_replaced():
    """The recaption block is written once now (``pipeline.stages.recaption.read_key``): the keys, and so the folder
    hashes, are those the two inline copies computed."""
    from pipeline.stages.features import key as features_key
    from pipeline.stages.train import key as train_key

    cfg = recaption_cfg()
    infos = {
        "data": DataInfo(fingerprint="d1"),
        "recaption": RecaptionInfo(fingerprint="r1", member="llava.txt", out_dir="/r"),
    }
    old_train = {
        "trainer": cfg.trainer,
        "model": key_fields(cfg.model),
        "train": key_fields(cfg.train),
        "mix": {k: v for k, v in key_fields(cfg.mix).items() if k not in REDUCTION_FIELDS},  # before reductions
        "data": key_fields(cfg.data),
        "data_fingerprint": "d1",
        "recaption": {
            "fingerprint": "r1",
            "member": "llava.txt",
            "layout_mode": cfg.recaption.layout_mode,
            "splits": list(cfg.recaption.splits),
        },
    }
    assert content_hash(train_key(RunContext(cfg, {}, [], infos))) == content_hash(old_train)
    assert content_hash(train_key(RunContext(cfg, {}, [], {"data": infos["data"]}))) == content_hash(
        {k: v for k, v in old_train.items() if k != "recaption"}
    )
    dit = dataclasses.replace(
        cfg, **{group: value for group, value in vars(dit_cfg()).items() if group in ("trainer", "model", "train")}
    )
    old_features = {
        "text_encoder": key_fields(dit.model.text_encoder),
        "image_space": key_fields(dit.model.image_space),
        "image_size": dit.model.image_size,
        "flip": dit.train.flip,
        "data": key_fields(dit.data),
        "concat_separator": dit.mix.concat_separator if dit.mix.strategy == "concat" else None,
        "data_fingerprint": "d1",
        "recaption": {"fingerprint": "r1", "member": "llava.txt", "layout_mode": dit.recaption.layout_mode},
    }
    assert content_hash(features_key(RunContext(dit, {}, [], infos))) == content_hash(old_features)


def dit_cfg():
    from pipeline.overrides import compose_config

    return compose_config(["+experiment=dit_smoke"])[0]


def test_recaption_fingerprint_is_the_data_stage_formula():
    from pipeline.stages.data import shard_fingerprint

    manifests = {
        "train": {
            "shards": [
                {"name": "train-000000.tar", "count": 4, "sha256": "aa"},
                {"name": "train-000001.tar", "count": 2, "sha256": "bb"},
            ]
        },
        "test": {"shards": [{"name": "test-000000.tar", "count": 3, "sha256": "cc"}]},
    }
    inline = content_hash(
        {s: [(m["name"], m["count"], m["sha256"]) for m in manifest["shards"]] for s, manifest in manifests.items()}
    )
    assert (
        shard_fingerprint(manifests)
        == inline
        == content_hash(
            {
                "test": [["test-000000.tar", 3, "cc"]],
                "train": [["train-000000.tar", 4, "aa"], ["train-000001.tar", 2, "bb"]],
            }
        )
    )


def test_no_stage_module_names_a_family():
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipeline", "stages")
    family_words = re.compile(r"trainer ==|\b(dit|clip|train_dit|train_clip)\b", re.IGNORECASE)
    found = [
        (name, line)
        for name in sorted(os.listdir(folder))
        if name.endswith(".py")
        for line in open(os.path.join(folder, name))
        if family_words.search(line)
    ]
    assert found == []
    assert family_words.search("from train_dit.sample import x") and family_words.search(
        "a CLIP score"
    )  # the pattern bites


def test_a_family_stage_under_another_family_is_a_one_line_error():
    from pipeline.overrides import compose_config

    with pytest.raises(ConfigError) as info:
        compose_config(["+experiment=clip_smoke", "run.stages=[data,train,sample]"])
    assert str(info.value) == "run.stages lists sample, a stage trainer=clip does not run; drop it or set trainer=dit"


def test_a_harness_export_evaluator_loads_through_the_loader_passed_in(tmp_path):
    from evals.tasks.t2i import load_evaluator

    export = tmp_path / "clip_mix_p0.0-abc" / "export"
    export.mkdir(parents=True)
    calls = []
    embedder, name = load_evaluator(
        str(export), "cpu", lambda folder, device: calls.append((folder, device)) or "embedder"
    )
    assert (embedder, name, calls) == ("embedder", "harness CLIP clip_mix_p0.0-abc", [(str(export), "cpu")])
    with pytest.raises(ConfigError, match="needs the pipeline's loader"):
        load_evaluator(str(export), "cpu")


def test_caption_reductions_with_a_family_that_trains_on_whole_captions_are_a_one_line_error():
    from pipeline.overrides import compose_config

    with pytest.raises(ConfigError) as info:
        compose_config(["+experiment=dit_smoke", "mix.recap_reduce=token_span", "mix.recap_tokens=8"])
    assert str(info.value).startswith(
        "mix: mix.recap_reduce=token_span, mix.recap_tokens=8 with trainer=dit, which trains on whole captions"
    )
    cfg, _ = compose_config(["+experiment=clip_smoke", "mix.recap_reduce=token_span", "mix.recap_tokens=8"])
    assert cfg.mix.reduction_label() == "recap token_span K=8"
