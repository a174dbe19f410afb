"""The real Hydra configs compose; wrong values fail at start-up with one-line messages; what is published is what
the stages use."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from captiondata.config import CaptionField
from captiondata.counters import SampleCounters
from captiondata.reader import decode_record, raw_samples
from harness_infra.errors import ConfigError
from harness_infra.stagecache import canonical
from pipeline.cli import main
from pipeline.overrides import CONF_DIR, compose_config, sweep_jobs

EXPERIMENTS = sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "experiment")) if f.endswith(".yaml"))
README_LAYOUT = "data.layout.recaptions=[{member: json, field: recaptions}, {member: llava.txt}]"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    cfg, resolved = compose_config([f"+experiment={name}"])
    assert cfg.experiment.startswith(name.replace("_0.8", ""))
    assert resolved["mix"]["p"] == cfg.mix.p and cfg.trainer == ("dit" if name.startswith("dit_") else "clip")


def hydra_composed(overrides):
    """What Hydra composes, resolved, before typing (``evals.tasks.config.UNSET`` for task keys no file set)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)
    finally:
        GlobalHydra.instance().clear()


def assert_set_keys_kept(given, typed):
    """Every key a file or override set holds the value the typed config has."""
    from evals.tasks.config import UNSET

    for key, value in given.items():
        if isinstance(value, dict):
            assert_set_keys_kept(value, typed.get(key) or {})
        elif value != UNSET:
            assert key in typed and typed[key] == value, key


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_published_config_is_the_typed_config_the_stages_use(name):
    for extra in ([], [README_LAYOUT], ["eval=t2i_scenes", "eval.tasks.1.max_samples=9"]):
        cfg, published = compose_config([f"+experiment={name}", *extra])
        assert published == canonical(cfg)
        composed = hydra_composed([f"+experiment={name}", *extra])
        tasks, given = published["eval"].pop("tasks"), composed["eval"].pop("tasks")
        defaults = composed["eval"].pop("task_defaults")
        assert published["eval"].pop("task_defaults") == defaults
        assert published == composed  # everything but the tasks exactly as Hydra composed it
        assert len(tasks) == len(given) and tasks
        for typed, entry in zip(tasks, given):  # each task: the keys it set, the shared ones, its kind's defaults
            assert_set_keys_kept(entry, typed)
            assert_set_keys_kept({k: v for k, v in defaults.items() if k not in entry or entry[k] == "<unset>"}, typed)
        if "eval=t2i_scenes" in extra:
            assert tasks[1]["max_samples"] == 9 and tasks[0]["max_samples"] == 500 and tasks[0]["kid_subsets"] == 100


def test_the_mix_study_is_one_overlay_swept_over_p():
    for p in (0.0, 0.2, 0.5, 1.0):
        cfg, resolved = compose_config(["+experiment=clip_mix", f"mix.p={p}"])
        assert cfg.mix.p == p and cfg.mix.p_original == p and cfg.experiment == f"clip_mix_p{p}"
    card, _ = compose_config(["+experiment=clip_mix_0.8"])
    study, _ = compose_config(["+experiment=clip_mix"])
    assert canonical(card) == canonical(study) and card.mix.p == 0.8


def test_a_layout_override_survives_the_data_preset_and_reaches_the_reader(tmp_path):
    cfg, resolved = compose_config(["+experiment=clip_mix", README_LAYOUT])
    assert [(f.member, f.field) for f in cfg.data.layout.recaptions] == [("json", "recaptions"), ("llava.txt", None)]
    assert resolved["data"]["layout"]["recaptions"] == [
        {"member": "json", "field": "recaptions"},
        {"member": "llava.txt", "field": None},
    ]
    # one sample whose recaptions sit in two members: the reader pools exactly the two the record publishes
    members = {
        "k0.jpg": b"\xff\xd8",
        "k0.txt": b"alt text",
        "k0.json": b'{"recaptions": ["a dense json recaption"]}',
        "k0.llava.txt": b"a llava recaption",
    }
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = next(raw_samples([str(path)], SampleCounters()))
    record = decode_record(raw, cfg.data.layout, decode=False)
    assert record.original == "alt text" and record.recaptions == ["a dense json recaption", "a llava recaption"]
    # the recap_datacomp preset applies where the user set nothing, and a user's field wins over it
    preset, _ = compose_config(
        ["+experiment=clip_mix", "data=recap_datacomp", "data.train_shards=/x.tar", "data.layout.original.field=alt"]
    )
    assert preset.data.layout.original == CaptionField("json", "alt") and preset.data.layout.recaptions == [
        CaptionField("txt", None)
    ]


def test_overrides_reach_typed_config():
    cfg, _ = compose_config(["+experiment=clip_mix_0.8", "mix.p=0.3", "data=flickr8k", "data.num_workers=0"])
    assert (cfg.mix.p, cfg.data.builder, cfg.data.num_workers) == (0.3, "flickr8k", 0)
    assert cfg.data.layout.recaptions[0].field == "recaptions"


@pytest.mark.parametrize(
    "override,message",
    [
        ("mix.p=1.5", "mix.p=1.5 is outside [0, 1]"),
        ("mix.p=-0.1", "mix.p=-0.1 is outside [0, 1]"),
        ("mix.strategy=sometimes", "mix.strategy='sometimes' is unknown"),
        ("train.stages.0.batch_size=-4", "batch_size=-4 must be positive"),
        ("data.num_workers=-1", "data.num_workers=-1 must be >= 0"),
        ("data.builder=laion", "data.builder='laion' is unknown"),
        ("mix.p=often", "often"),
        ("data.no_such_key=1", "Could not override 'data.no_such_key': Key 'no_such_key' not in 'DataConfig'"),
        ("mix.pp=0.5", "Could not override 'mix.pp': Key 'pp' not in 'MixConfig'"),
        ("model.no_such=1", "Key 'no_such' not in 'ClipModelConfig'"),
        ("run.stages=[train,eval]", "run.stages: 'train' needs data before it"),
        ("run.stages=[data,train,evaluate]", "run.stages: 'evaluate' is not a stage"),
        (
            "run.stages=[data,train,recaption]",
            "run.stages: 'train' reads the output of recaption, so recaption must come before it",
        ),
        (
            "run.stages=[data,train,features]",
            "run.stages: 'train' reads the output of features, so features must come before it",
        ),
        (
            "run.stages=[data,features,train,eval]",
            "run.stages lists features, a stage trainer=clip does not run; drop it or set trainer=dit",
        ),
        ("run.rerun=tables", "run.rerun='tables' is not one of run.stages"),
        ("trainer=dit", "trainer"),
    ],
)
def test_bad_values_fail_with_one_line(override, message):
    overrides = ["+experiment=clip_mix_0.8", override] + (
        ["run.stages=[data,train,eval]"] if override.startswith("run.rerun") else []
    )
    with pytest.raises(ConfigError) as info:
        compose_config(overrides)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_main_prints_one_line_and_exits_nonzero(capsys):
    assert main(["+experiment=clip_mix_0.8", "mix.p=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: mix.p=2.0 is outside [0, 1]") and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["+experiment=clip_mix_0.9"],
            "error: unknown experiment 'clip_mix_0.9'; choose one of clip_coca_recap_mix, clip_concat",
        ),
        (
            ["experiment=clip_mix_0.8"],
            "error: experiment=clip_mix_0.8: experiments are added to the config, write +experiment=clip_mix_0.8",
        ),
        (["+experiment=clip_mix", "mix.p=0,0.5"], "error: mix.p=0,0.5 is a sweep; add -m to run one job per value"),
        (["-m", "+experiment=clip_mix", "mix.p=0,1.5"], "error: mix.p=1.5 is outside [0, 1]"),
    ],
)
def test_command_line_mistakes_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_missing_data_path_is_one_line(capsys, tmp_path):
    assert (
        main(
            [
                "+experiment=clip_mix_0.8",
                "data=flickr8k",
                f"data.source={tmp_path}/nowhere",
                f"run.out_root={tmp_path}",
                f"run.results_dir={tmp_path}/results",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lacks Flickr8k.token.txt" in errors[0] and "Traceback" not in err


def test_help_lists_the_config_groups(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for group in ("data:", "mix:", "trainer:", "model:", "train:", "eval:", "experiment:"):
        assert group in out
    assert "clip_mix" in out and "recap_datacomp" in out


def test_multirun_expands_the_cartesian_product():
    jobs = sweep_jobs(["+experiment=clip_mix", "mix.p=0,0.5,1", "mix.seed=1,2"], multirun=True)
    assert len(jobs) == 6
    assert ["+experiment=clip_mix", "mix.p=0.5", "mix.seed=2"] in jobs
    assert sweep_jobs(["mix.p=1"], multirun=False) == [["mix.p=1"]]
