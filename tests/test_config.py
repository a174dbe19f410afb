"""The real Hydra configs compose; wrong values fail at start-up with one-line messages."""

from __future__ import annotations

import os

import pytest

from captiondata.config import ConfigError
from evals.run import CONF_DIR, compose_config, main, sweep_jobs

EXPERIMENTS = sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "experiment")) if f.endswith(".yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    cfg, resolved = compose_config([f"+experiment={name}"])
    assert cfg.experiment == name
    assert resolved["mix"]["p"] == cfg.mix.p
    if name.startswith("clip_mix_"):
        assert cfg.mix.strategy == "mix" and cfg.mix.p == float(name.rsplit("_", 1)[1])


def test_overrides_reach_typed_config():
    cfg, _ = compose_config(["+experiment=clip_mix_0.8", "mix.p=0.3", "data=flickr8k", "data.num_workers=0"])
    assert (cfg.mix.p, cfg.data.builder, cfg.data.num_workers) == (0.3, "flickr8k", 0)
    assert cfg.data.layout.recaptions[0].field == "recaptions"


@pytest.mark.parametrize("override,message", [
    ("mix.p=1.5", "mix.p=1.5 is outside [0, 1]"),
    ("mix.p=-0.1", "mix.p=-0.1 is outside [0, 1]"),
    ("mix.strategy=sometimes", "mix.strategy='sometimes' is unknown"),
    ("train.stages.0.batch_size=-4", "batch_size=-4 must be positive"),
    ("data.num_workers=-1", "data.num_workers=-1 must be >= 0"),
    ("data.builder=laion", "data.builder='laion' is unknown"),
    ("mix.p=often", "often"),
    ("data.no_such_key=1", "no_such_key"),
])
def test_bad_values_fail_with_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        compose_config(["+experiment=clip_mix_0.8", override])
    text = str(info.value)
    assert message in text and "\n" not in text


def test_main_prints_one_line_and_exits_nonzero(capsys):
    assert main(["+experiment=clip_mix_0.8", "mix.p=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: mix.p=2.0 is outside [0, 1]") and "\n" not in err and "Traceback" not in err


def test_unknown_experiment_is_one_line(capsys):
    assert main(["+experiment=clip_mix_0.9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown experiment 'clip_mix_0.9'; choose one of clip_concat") and "\n" not in err


def test_missing_data_path_is_one_line(capsys, tmp_path):
    assert main(["+experiment=clip_mix_0.8", "data=flickr8k", f"data.source={tmp_path}/nowhere", f"run.out_root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "lacks Flickr8k.token.txt" in err and "\n" not in err


def test_multirun_expands_the_cartesian_product():
    jobs = sweep_jobs(["+experiment=clip_mix_0.8", "mix.p=0,0.5,1", "mix.seed=1,2"], multirun=True)
    assert len(jobs) == 6
    assert ["+experiment=clip_mix_0.8", "mix.p=0.5", "mix.seed=2"] in jobs
    assert sweep_jobs(["mix.p=0,1"], multirun=False) == [["mix.p=0,1"]]
