"""EvalConfig / TaskConfig validation (one-line ConfigError) and the conf/eval YAML files."""

from __future__ import annotations

import glob
import os

import pytest
from omegaconf import OmegaConf

from harness_infra.errors import ConfigError
from evals.tasks.config import EvalConfig, TaskConfig

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "eval")


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "eval.batch_size=0 must be positive"),
    ({"precision": "fp8"}, "eval.precision='fp8' is unknown"),
    ({"confidence": 1.0}, "eval.confidence=1.0 must be in (0, 1)"),
    ({"ks": [1, 0]}, "eval.ks=[1, 0] must be a non-empty list of positive integers"),
    ({"context_length": 1}, "eval.context_length=1 must be >= 2 or null"),
    ({"bootstrap_samples": -1}, "eval.bootstrap_samples=-1 must be >= 0"),
    ({"tasks": [{"name": "a"}, {"name": "a"}]}, "eval.tasks has duplicate names: ['a']"),
])
def test_bad_eval_values_fail_with_one_line(kwargs, message):
    with pytest.raises(ConfigError) as info:
        EvalConfig(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs,message", [
    ({"task": "captioning"}, "task='captioning' is unknown"),
    ({"format": "parquet"}, "format='parquet' is unknown"),
    ({"task": "retrieval", "format": "image_folder"}, "format=image_folder holds class labels"),
    ({"task": "zeroshot_classification", "format": "flickr8k"}, "zero-shot classification reads image_folder or clip_benchmark_wds"),
    ({"task": "caption_diagnostics", "format": "flickr8k"}, "caption_diagnostics reads project_shards"),
    ({"max_samples": 0}, "max_samples=0 must be positive"),
])
def test_bad_task_values_fail_with_one_line(kwargs, message):
    with pytest.raises(ConfigError) as info:
        TaskConfig(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_relative_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("RECAP_DATA_ROOT", str(tmp_path))
    assert TaskConfig(path="cifar10").resolved_path() == os.path.join(str(tmp_path), "cifar10")
    shards = TaskConfig(task="retrieval", format="project_shards", path="cache/shards/x/test-*.tar")
    assert shards.resolved_path() == "cache/shards/x/test-*.tar"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONF, "*.yaml"))))
def test_yaml_files_build_typed_configs(path):
    merged = OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.load(path))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, EvalConfig) and cfg.tasks and all(isinstance(t, TaskConfig) for t in cfg.tasks)
