"""train_clip configuration: validation messages, stage arithmetic, and the real conf/model + conf/train files."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import train_clip.models  # noqa: F401  (registers the RecapCLIP-* model configs)
from harness_infra.errors import ConfigError
from train_clip.config import ClipModelConfig, StageConfig, TrainConfig

CONF = Path(__file__).resolve().parent.parent / "conf"


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: StageConfig(batch_size=0), "train.stages[].batch_size"),
        (lambda: StageConfig(warmup_samples=10, warmup_steps=1), "warmup_samples or warmup_steps"),
        (lambda: TrainConfig(precision="fp8"), "train.precision"),
        (lambda: TrainConfig(stages=[]), "train.stages"),
        (lambda: TrainConfig(accum_steps=0), "train.accum_steps"),
        (lambda: TrainConfig(local_loss=True, gather_with_grad=False), "train.gather_with_grad"),
        (lambda: TrainConfig(betas=[0.9]), "train.betas"),
        (lambda: ClipModelConfig(precision="int8"), "model.precision"),
        (lambda: ClipModelConfig(inline={"embed_dim": 8}), "model.inline"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(make, key):
    with pytest.raises(ConfigError) as err:
        make()
    assert key in str(err.value) and "\n" not in str(err.value)


def test_stage_arithmetic_uses_the_effective_global_batch():
    stage = StageConfig(samples=1000, batch_size=16, warmup_samples=100)
    assert stage.global_batch(world_size=2, accum_steps=4) == 128
    assert stage.num_steps(2, 4) == 8  # ceil(1000 / 128)
    assert stage.num_warmup_steps(2, 4) == 1
    assert StageConfig(warmup_steps=7).num_warmup_steps(8, 8) == 7


def test_stages_given_as_dicts_become_stage_configs():
    cfg = TrainConfig(stages=[{"image_size": 32, "samples": 64, "batch_size": 8, "lr": 1e-3}])
    assert isinstance(cfg.stages[0], StageConfig) and cfg.stages[0].image_size == 32


def group_files(group: str, dit: bool) -> list:
    """The files of a model/ or train/ group that belong to the CLIP family (dit=False) or the DiT family."""
    return sorted(p for p in (CONF / group).glob("*.yaml") if p.stem.startswith("dit_") == dit)


@pytest.mark.parametrize("path", group_files("model", dit=False), ids=lambda p: p.stem)
def test_model_group_files_are_typed_and_name_open_clip_models(path):
    from pipeline.overrides import compose_config

    cfg = compose_config([f"model={path.stem}"])[0].model
    assert isinstance(cfg, ClipModelConfig) and open_clip.get_model_config(cfg.name) is not None, cfg.name


@pytest.mark.parametrize("path", group_files("train", dit=False), ids=lambda p: p.stem)
def test_train_group_files_are_typed(path):
    from pipeline.overrides import compose_config

    cfg = compose_config([f"train={path.stem}"])[0].train
    assert isinstance(cfg, TrainConfig) and all(isinstance(s, StageConfig) for s in cfg.stages)


@pytest.mark.parametrize("path", group_files("model", dit=True) + group_files("train", dit=True), ids=lambda p: p.stem)
def test_dit_group_files_are_typed_by_the_dit_family(path):
    from pipeline.overrides import compose_config
    from train_dit.config import DitModelConfig, DitTrainConfig

    cfg = compose_config(["trainer=dit", f"{path.parent.name}={path.stem}"])[0]
    assert isinstance(cfg.model, DitModelConfig) and isinstance(cfg.train, DitTrainConfig)


def test_a_typo_in_a_group_file_fails_at_composition():
    with pytest.raises(OmegaConfBaseException):
        OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create({"wieght_decay": 0.1}))


def test_clipa_file_encodes_the_paper_recipe():
    from pipeline.overrides import compose_config

    cfg = compose_config(["train=clipa"])[0].train
    first, second = cfg.stages
    assert (first.image_size, first.samples, first.global_batch_size) == (112, 2_560_000_000, 32768)
    assert (second.image_size, second.samples, second.global_batch_size) == (224, 128_000_000, 16384)


def test_project_config_composes_with_these_groups():
    from pipeline.overrides import compose_config

    harness, _ = compose_config(["model=b16_base", "train=tiny_clipa_cpu"])
    assert harness.model.name == "RecapCLIP-ViT-B-16-text-base"
    assert [s.image_size for s in harness.train.stages] == [32, 64]
