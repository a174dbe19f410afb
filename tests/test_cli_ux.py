"""The runner talks like the tools its users know (issue 14, item 11): Hydra's --help answers fast without loading a
model library, one-line errors keep the reason and say what to do, no run trains without an experiment, the README's
command lines parse in Hydra's grammar, torchrun ranks other than 0 log warnings only, each epoch is logged once and
above the progress bar, and benchmark scripts end in one line."""

from __future__ import annotations

import importlib
import io
import logging
import os
import re
import shlex
import subprocess
import sys

import pytest

from harness_infra.errors import ConfigError
from pipeline.cli import main, rank_logging
from pipeline.overrides import CONF_DIR, compose_config, parse_overrides, prevalidate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "experiment")) if f.endswith(".yaml"))


def readme() -> str:
    """The README's text."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        return handle.read()


def readme_commands() -> list:
    """Every ``python -m evals.run`` / ``torchrun ... -m evals.run`` line of the README's bash blocks, as the shell
    splits it (continuation lines joined, comments dropped): the overrides after ``evals.run``."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "evals.run" in words:
                commands.append([w for w in words[words.index("evals.run") + 1 :] if not w.startswith("-")])
    return commands


def test_help_answers_without_loading_torch_or_open_clip():
    """``python -m evals.run --help`` lists the config groups; importing and composing loads no model library."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "evals.run", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for group in ("data:", "mix:", "trainer:", "model:", "train:", "eval:", "experiment:"):
        assert group in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and "pipeline.schema" in imported  # the import report is real
    assert not imported & {"torch", "open_clip", "torchvision", "timm", "webdataset"}


def test_inspecting_a_sweep_is_one_line_not_hydras_stack(capsys):
    assert main(["-m", "+experiment=clip_mix", "mix.p=0,1", "--cfg", "job"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --cfg inspects one job, -m runs a sweep: drop -m") and "\n" not in err


def test_a_key_not_in_the_config_keeps_the_reason_and_lists_the_keys(capsys):
    assert main(["+experiment=clip_mix_0.8", "mix.pp=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: Could not override 'mix.pp': Key 'pp' not in 'MixConfig' "
        "(mix has: strategy, p, seed, concat_separator, recap_reduce, original_reduce, recap_tokens, original_tokens, "
        "recap_sentences, original_sentences, positives; did you mean mix.p?)"
    )
    assert main(["+experiment=clip_mix_0.8", "data.layout.orig=txt"]) == 2
    assert (
        "(data.layout has: original, recaptions, references, image_members; did you mean data.layout.original?)"
        in capsys.readouterr().err
    )


def test_no_experiment_is_refused_before_anything_runs(capsys, tmp_path):
    where = [f"run.out_root={tmp_path}/runs", f"run.results_dir={tmp_path}/results"]
    assert main(["mix.p=0.5", *where]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no experiment chosen: add +experiment=NAME, one of {', '.join(EXPERIMENTS)}")
    assert (
        err.endswith("(or, to train the base config composed from groups, name the run: run.name=NAME)")
        and "\n" not in err
    )
    assert not os.path.exists(tmp_path / "runs") and not os.path.exists(
        tmp_path / "results"
    )  # nothing trained or published
    assert main(["-m", "mix.p=0,1", *where]) == 2  # a sweep too
    assert prevalidate(["data=flickr8k", "run.stop_after=data"], multirun=False) == 1  # the README's shards-only build
    assert prevalidate(["run.stages=[data]"], multirun=False) == 1
    assert (
        prevalidate(shlex.split("run.name=my_run model=tiny train=tiny_cpu mix.p=0.5"), multirun=False) == 1
    )  # README: on purpose
    assert compose_config(["run.name=my_base_run"])[0].experiment == "my_base_run"  # ... and labelled so
    with pytest.raises(
        ConfigError,
        match=r"unknown experiment 'clip_mx'; .* \(did you mean clip_mix\?\); to name a run of the base "
        r"config, write run.name=clip_mx",
    ):
        prevalidate(["experiment=clip_mx"], multirun=False)
    with pytest.raises(ConfigError, match=r"write \+experiment=clip_mix_0.8"):
        prevalidate(["experiment=clip_mix_0.8"], multirun=False)
    with pytest.raises(ConfigError, match="labels its runs itself"):
        prevalidate(["+experiment=clip_mix", "run.name=mine"], multirun=False)


def test_the_readme_shard_override_parses_and_reaches_the_config():
    text = readme()
    block = text.split("<!-- readme: shard override -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    words = shlex.split(block.strip())
    overrides = words[words.index("evals.run") + 1 :]
    assert [o.value() for o in parse_overrides(overrides)][-1] == "/data/recap/train-{000000..000099}.tar"
    cfg, resolved = compose_config(overrides)
    assert cfg.data.train_shards == resolved["data"]["train_shards"] == "/data/recap/train-{000000..000099}.tar"


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "data.train_shards=/data/recap/train-{000000..000099}.tar",
            "error: data.train_shards=/data/recap/train-{000000..000099}.tar: Hydra's override grammar rejects this value "
            "(mismatched input '{' expecting <EOF>); quote it for Hydra inside the shell's quotes: "
            "'data.train_shards=\"/data/recap/train-{000000..000099}.tar\"'",
        ),
        (
            "data.train_shards=s3://bucket/k=v/train-000000.tar",
            "quote it for Hydra inside the shell's quotes: 'data.train_shards=\"s3://bucket/k=v/train-000000.tar\"'",
        ),
    ],
)
def test_an_unquoted_brace_or_equals_is_one_line_with_the_quoted_form(capsys, override, message):
    assert main(["+experiment=clip_mix", "data=recap_datacomp", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error: ") and "\n" not in err


def test_a_shell_expanded_brace_is_refused_not_cut_to_its_last_shard(capsys):
    expanded = shlex.split(
        "data.train_shards=/d/train-000000.tar data.train_shards=/d/train-000001.tar"
    )  # bash's {0..1}
    assert main(["+experiment=clip_mix", "data=recap_datacomp", *expanded]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.train_shards is given twice in a row") and "quote the override" in err
    assert len(parse_overrides(["mix.p=0", "run.stop_after=data", "mix.p=1"])) == 3  # a later override still wins


def test_every_readme_command_line_parses_in_hydras_grammar():
    commands = readme_commands()
    assert len(commands) >= 15 and ["+experiment=clip_mix_0.8"] in commands
    for overrides in commands:
        parse_overrides(overrides)


def test_ranks_other_than_0_log_warnings_only_with_their_rank(monkeypatch):
    """Hydra's console handler on the root logger, the project's loggers at INFO (conf/config.yaml's job_logging)."""
    root, log, stream = logging.getLogger(), logging.getLogger("pipeline"), io.StringIO()
    console = logging.StreamHandler(stream)
    console.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    monkeypatch.setattr(root, "handlers", [console])
    monkeypatch.setattr(log, "level", logging.INFO)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        rank_logging()
        log.info("info of rank %s", rank)
        log.warning("warning of rank %s", rank)
    assert stream.getvalue().splitlines() == [
        "[pipeline][INFO] - info of rank 0",
        "[pipeline][WARNING] - warning of rank 0",
        "[rank 1][pipeline][WARNING] - warning of rank 1",
    ]


def test_each_epoch_is_logged_once_and_above_the_progress_bar(shard_factory, tmp_path, capsys, monkeypatch):
    """A 2-epoch run with the bar on: one INFO line per epoch, each on its own line (never after the bar's text)."""
    from conftest import make_records

    from captiondata.config import DataConfig, MixConfig
    from train_clip.config import ClipModelConfig, StageConfig, TrainConfig
    from train_clip.train import train

    micro = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
    }
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # the bar is drawn on a terminal only
    root, handler = (
        logging.getLogger(),
        logging.StreamHandler(sys.stderr),
    )  # stderr as pytest captures it, as Hydra's console
    handler.setFormatter(logging.Formatter("LOG %(name)s: %(message)s"))
    levels = {name: logging.getLogger(name).level for name in ("training", "captiondata", "train_clip")}
    root.addHandler(handler)
    for name in levels:  # Hydra's job logging: the project's loggers at INFO
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        data = DataConfig(
            builder="none", train_shards=shard_factory(make_records(16), per_shard=8), num_workers=0, shuffle_buffer=0
        )
        cfg = TrainConfig(
            stages=[StageConfig(image_size=32, samples=32, batch_size=8, lr=1e-3)],
            threads=1,
            log_every=1,
            progress_bar=True,
            tensorboard=False,
            checkpoint_every_steps=0,
            device="cpu",
        )
        result = train(
            ClipModelConfig(name="TestCLIP-ux", inline=micro), cfg, data, MixConfig(p=0.5), str(tmp_path / "run")
        )
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    err = capsys.readouterr().err
    assert result.steps == 4 and "%|" in err  # two epochs of 2 steps; the bar was drawn
    shown = [
        line.rsplit("\r", 1)[-1] for line in err.split("\n") if "LOG " in line
    ]  # what a terminal shows of each line
    assert shown and all(line.startswith("LOG ") for line in shown), shown  # no log text after the bar's on one line
    epochs = [line for line in shown if re.search(r"\bepoch [01]\b", line)]
    assert [line.split(" done")[0] for line in epochs] == [
        "LOG training.monitor: epoch 0",
        "LOG training.monitor: epoch 1",
    ], epochs


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    """Redirected to a file, the log holds log lines, not thousands of carriage-return bar updates."""
    from training.distributed import DistEnv
    from training.monitor import RunMonitor

    monitor = RunMonitor(str(tmp_path), DistEnv(), 10, 0, 0, 1, tensorboard=False, progress_bar=True)
    assert monitor.bar.disable
    monitor.close()


# -- benchmarks ----------------------------------------------------------------------------------------------------


def bench(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``python benchmarks/NAME.py ARGS`` with extra environment variables."""
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def test_a_benchmark_ends_in_one_line():
    done = bench("train_clip_vs_open_clip", "--shards", "/nonexistent")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip() == "error: no train-*.tar in /nonexistent; pass --build (Flickr8k) or --synthetic N"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,message",
    [
        ("eval_vs_clip_benchmark", "error: image folder /nonexistent/cifar10/test does not exist"),
        ("loader", "error: Flickr8k folder '/nonexistent/flickr8k' lacks"),
        ("lit_feature_cache", "error: [Errno 2] No such file or directory: '/nonexistent/flickr8k/Flickr8k.token.txt'"),
        ("recaption", "error: Flickr8k not found at /nonexistent/flickr8k"),
    ],
)
def test_every_benchmark_ends_in_one_line_without_its_data(name, message):
    done = bench(name, RECAP_DATA_ROOT="/nonexistent")
    assert (
        done.returncode == 2
        and done.stderr.strip().splitlines()[-1].startswith(message)
        and "Traceback" not in done.stderr
    )


def test_run_script_one_line_for_user_errors_and_a_traceback_for_bugs(monkeypatch, capsys):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        from _common import run_script
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(sys, "argv", ["bench"])
    monkeypatch.delenv("RECAP_TRACEBACK", raising=False)

    def missing_package():
        importlib.import_module("clip_benchmark_not_installed")

    def bad_config():
        raise ConfigError("--steps=0 must be positive")

    def bug():
        raise RuntimeError("a bug")

    for main_function, code, line in (
        (bad_config, 2, "error: --steps=0 must be positive"),
        (
            missing_package,
            2,
            "error: No module named 'clip_benchmark_not_installed': this benchmark "
            "needs it (pip install clip_benchmark_not_installed)",
        ),
        (lambda: None, 0, ""),
    ):
        with pytest.raises(SystemExit) as done:
            run_script(main_function)
        assert done.value.code == code and capsys.readouterr().err.strip() == line
    with pytest.raises(RuntimeError):
        run_script(bug)
    monkeypatch.setattr(sys, "argv", ["bench", "--traceback"])
    with pytest.raises(ConfigError):
        run_script(bad_config)


def test_sweep_jobs_are_the_basic_sweepers_jobs_in_its_order():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the reference: what Hydra launches
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pipeline.overrides import sweep_jobs

    for overrides in (
        ["+experiment=clip_mix", "mix.p=0,0.5,1", "train.seed=range(1,3)"],
        ["mix.p=0.2", "train.seed=3,1,2", "mix.p=0,1", "run.name=x"],
        ["+experiment=clip_mix_0.8"],
    ):
        expected = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)[0]
        assert sweep_jobs(overrides, multirun=True) == expected
    assert len(sweep_jobs(["mix.p=0,0.5,1", "train.seed=1,2"], multirun=True)) == 6
    assert sweep_jobs(["train.seed=range(1,4)"], multirun=True) == [
        ["train.seed=1"],
        ["train.seed=2"],
        ["train.seed=3"],
    ]
    with pytest.raises(ConfigError, match=r"^mix.p=interval\(0,1\): the basic sweeper expands only discrete sweeps"):
        sweep_jobs(["mix.p=interval(0,1)"], multirun=True)
