"""EvalConfig / TaskConfig validation (one-line ConfigError) and the conf/eval YAML files."""

from __future__ import annotations

import glob
import os

import pytest
from omegaconf import OmegaConf

from evals.tasks.config import (
    ClipScoreTaskConfig,
    EvalConfig,
    FidTaskConfig,
    RetrievalTaskConfig,
    TaskConfig,
    ZeroShotTaskConfig,
    task_config,
)
from harness_infra.errors import ConfigError

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "eval")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_size": 0}, "eval.batch_size=0 must be positive"),
        ({"precision": "fp8"}, "eval.precision='fp8' is unknown"),
        ({"confidence": 1.0}, "eval.confidence=1.0 must be in (0, 1)"),
        ({"ks": [1, 0]}, "eval.ks=[1, 0] must be a non-empty list of positive integers"),
        ({"context_length": 1}, "eval.context_length=1 must be >= 2 or null"),
        ({"bootstrap_samples": -1}, "eval.bootstrap_samples=-1 must be >= 0"),
        (
            {"tasks": [{"name": "a", "task": "zeroshot_classification", "path": "x"}] * 2},
            "eval.tasks has duplicate names: ['a']",
        ),
    ],
)
def test_bad_eval_values_fail_with_one_line(kwargs, message):
    with pytest.raises(ConfigError) as info:
        EvalConfig(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"task": "captioning"}, "task='captioning' is unknown"),
        ({"format": "parquet"}, "format='parquet' is unknown"),
        ({"task": "retrieval", "format": "image_folder"}, "format=image_folder holds class labels"),
        (
            {"task": "zeroshot_classification", "format": "flickr8k"},
            "zero-shot classification reads image_folder or clip_benchmark_wds",
        ),
        ({"task": "caption_diagnostics", "format": "flickr8k"}, "caption_diagnostics reads project_shards"),
        ({"max_samples": 0}, "max_samples=0 must be positive"),
        ({"task": "fid", "format": "flickr8k"}, "task=fid reads prompts and reference images from project_shards"),
        ({"task": "fid", "generation": {"sampler": "heun"}}, "eval task t: generation.sampler='heun' is unknown"),
        ({"task": "fid", "generation": {"steps": 0}}, "eval task t: generation.steps=0 must be positive"),
        ({"task": "clip_score"}, "clip_score needs one of evaluator"),
        ({"task": "clip_score", "evaluator": "ViT-B-32:x", "evaluator_experiment": "clip_mix_p1.0"}, "not both"),
        ({"task": "vlm_judge", "judge_url": "http://x/v1"}, "needs judge_url and judge_model together"),
    ],
)
def test_bad_task_values_fail_with_one_line(kwargs, message):
    with pytest.raises(ConfigError) as info:
        task_config({"name": "t", "task": "zeroshot_classification", "path": "p", **kwargs})
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "fields,defaults,named",
    [
        (
            {"task": "retrieval", "guidance_scale": 4.0},
            None,
            "guidance_scale is not a key of RetrievalTaskConfig",
        ),  # another kind's key
        ({"task": "fid", "evaluator": "x"}, None, "evaluator is not a key of FidTaskConfig"),
        (
            {"task": "fid", "generate_batch": 8},
            None,
            "generate_batch is not a key of FidTaskConfig",
        ),  # the old flat name
        ({"task": "fid"}, {"templates": "cifar"}, "eval.task_defaults.templates is not a key of FidTaskConfig"),
        ({"task": "fid", "generation": {"batch": 8}}, None, "generation.batch"),
        ({"task": "fid", "generation": {"steps": "many"}}, None, "generation.steps"),
        ({"task": "fid", "max_samples": "all"}, None, "max_samples"),
    ],
)
def test_a_wrong_task_key_or_type_is_one_line_naming_it(fields, defaults, named):
    with pytest.raises(ConfigError) as info:
        task_config({"name": "t", "path": "p", **fields}, defaults)
    assert named in str(info.value) and str(info.value).startswith("eval task t: ") and "\n" not in str(info.value)


def test_every_registered_task_has_a_config_of_its_kind():
    from evals.tasks.config import TASK_CONFIGS, T2ITaskConfig
    from evals.tasks.registry import GENERATOR, TASKS

    assert set(TASK_CONFIGS) == set(TASKS)
    assert {name for name, kind in TASK_CONFIGS.items() if issubclass(kind, T2ITaskConfig)} == {
        name for name, spec in TASKS.items() if spec.evaluates == GENERATOR
    }


def test_each_task_kind_has_its_own_config_and_keys():
    assert type(task_config(name="r", task="long_retrieval", format="caption_folder", path="u")) is RetrievalTaskConfig
    zeroshot = task_config(name="z", task="zeroshot_classification", path="cifar10", templates="cifar")
    assert (
        type(zeroshot) is ZeroShotTaskConfig and zeroshot.templates == "cifar" and not hasattr(zeroshot, "generation")
    )
    fid = task_config(
        {"name": "f", "task": "fid", "path": "s", "generation": {"steps": "7"}},
        {"max_samples": 5, "generation": {"steps": 3, "seed": 2}},
    )
    assert type(fid) is FidTaskConfig and not hasattr(fid, "templates") and not hasattr(fid, "evaluator")
    assert (fid.max_samples, fid.generation.steps, fid.generation.seed) == (
        5,
        7,
        2,
    )  # a task's own keys win, nested key by key
    with pytest.raises(ConfigError, match="task=fid takes a FidTaskConfig, not a ClipScoreTaskConfig"):
        ClipScoreTaskConfig(name="c", task="fid", path="s", evaluator="x")


def test_t2i_scenes_states_its_shared_settings_once_and_every_task_gets_them():
    lines = open(os.path.join(CONF, "t2i_scenes.yaml"), encoding="utf-8").read().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    for shared in ("sampler:", "steps:", "guidance_scale:", "batch_invariant:", "max_samples:", "@data/test-*.tar"):
        assert text.count(shared) == 1, shared
    cfg = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.load(os.path.join(CONF, "t2i_scenes.yaml")))
    )
    assert len(cfg.tasks) == 7
    for task in cfg.tasks:  # the committed scenes_t2i.md rows' settings
        g = task.generation
        assert (
            task.path,
            task.max_samples,
            g.sampler,
            g.steps,
            g.guidance_scale,
            g.batch_size,
            g.batch_invariant,
            g.seed,
        ) == ("@data/test-*.tar", 500, "dpm++", 25, 4.0, 100, False, 0)
    assert [t.evaluator_experiment for t in cfg.tasks if t.task == "clip_score"] == [
        "clip_mix_p1.0",
        "clip_mix_p1.0",
        "clip_mix_p0.0",
    ]


def test_relative_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("RECAP_DATA_ROOT", str(tmp_path))
    assert ZeroShotTaskConfig(name="c", path="cifar10").resolved_path() == os.path.join(str(tmp_path), "cifar10")
    shards = RetrievalTaskConfig(name="r", path="cache/shards/x/test-*.tar")
    assert shards.resolved_path() == "cache/shards/x/test-*.tar"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONF, "*.yaml"))))
def test_yaml_files_build_typed_configs(path):
    merged = OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.load(path))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, EvalConfig) and cfg.tasks and all(isinstance(t, TaskConfig) for t in cfg.tasks)


@pytest.mark.parametrize(
    "override,named",
    [
        (
            "eval.tasks.0.templates=cifar",
            "eval task smoke_raw_fid: templates is not a key of FidTaskConfig",
        ),  # another kind's key
        ("eval.tasks.0.guidance_scale=3.0", "guidance_scale"),  # no kind's key (it lives under generation)
        ("+eval.tasks.0.guidance_scale=3.0", "eval.tasks.0.guidance_scale is not a key of TaskEntry"),
        ("eval.tasks.0.generation.sampler=heun", "eval task smoke_raw_fid: generation.sampler='heun' is unknown"),
    ],
)
def test_a_wrong_task_key_in_a_composed_config_is_one_line_naming_it(override, named):
    from pipeline.overrides import compose_config

    with pytest.raises(ConfigError) as info:
        compose_config(["+experiment=dit_smoke", "eval=t2i_smoke", override])
    assert named in str(info.value) and "\n" not in str(info.value)


def test_any_task_key_a_file_left_out_is_overridden_without_a_plus():
    from pipeline.overrides import compose_config

    cfg, resolved = compose_config(
        [
            "+experiment=dit_smoke",
            "eval=t2i_smoke",
            "eval.tasks.0.max_samples=3",
            "eval.tasks.2.generation.steps=7",
            "eval.task_defaults.generation.seed=4",
        ]
    )
    fid, judge = cfg.eval.tasks[0], cfg.eval.tasks[2]
    assert (fid.max_samples, fid.generation.steps, fid.generation.seed, cfg.eval.tasks[1].max_samples) == (3, 5, 4, 8)
    assert (judge.generation.steps, judge.generation.sampler, judge.judge_rubric) == (
        7,
        "dpm++",
        "alignment_1to5",
    )  # the kind's defaults
