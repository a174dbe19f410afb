"""Habits of Hydra users: the ``recap-harness`` console script (the entry of ``python -m evals.run``) gives Hydra's
bash completion, run the way pip's generated script runs it; ``+debug=fast`` (or ``debug=fast``, in any order with
``+experiment=``) composes and shortens a run to a few steps."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

from omegaconf import OmegaConf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What pip writes for a [project.scripts] entry "recap-harness = pipeline.cli:main" (pip's console-script template).
CONSOLE_SCRIPT = """import re
import sys
from pipeline.cli import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""


def test_recap_harness_is_the_same_entry_as_python_m_evals_run():
    import importlib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["recap-harness"]
    module, _, name = target.partition(":")
    with open(os.path.join(ROOT, "evals", "run.py"), encoding="utf-8") as f:
        alias = f.read()
    assert f'importlib.import_module("{module}").{name}()' in alias  # python -m evals.run calls the same function
    assert callable(getattr(importlib.import_module(module), name))


def run_script(tmp_path, args, comp_line=None):
    script = tmp_path / "bin" / "recap-harness"  # no .py: Hydra then completes the command's own name, not "python"
    script.parent.mkdir(exist_ok=True)
    script.write_text(CONSOLE_SCRIPT)
    env = {**os.environ, **({"COMP_LINE": comp_line} if comp_line is not None else {})}
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_console_script_installs_and_answers_hydras_bash_completion(tmp_path):
    install = run_script(tmp_path, ["-sc", "install=bash"])
    assert (
        install.strip()
        .splitlines()[-1]
        .endswith("complete -o nospace -o default -F hydra_bash_completion recap-harness")
    )
    experiments = sorted(
        name[:-5] for name in os.listdir(os.path.join(ROOT, "conf", "experiment")) if name.endswith(".yaml")
    )
    clip_mix = run_script(tmp_path, ["-sc", "query=bash"], comp_line="recap-harness +experiment=clip_mix").split()
    assert (
        sorted(clip_mix)
        == [f"+experiment={e}" for e in experiments if e.startswith("clip_mix")]
        == ["+experiment=clip_mix", "+experiment=clip_mix_0.8"]
    )
    every = run_script(tmp_path, ["-sc", "query=bash"], comp_line="recap-harness +experiment=").split()
    assert sorted(every) == [f"+experiment={e}" for e in experiments]
    assert run_script(
        tmp_path, ["-sc", "query=bash"], comp_line="recap-harness +experiment=clip_mix +debug="
    ).split() == ["+debug=fast"]


def test_debug_fast_composes_in_either_order_and_shortens_the_run(capsys):
    from pipeline.cli import debug_last, main
    from pipeline.overrides import compose_config

    full, _ = compose_config(["+experiment=clip_mix"])
    for typed in (
        ["+experiment=clip_mix", "+debug=fast"],
        ["+debug=fast", "+experiment=clip_mix"],
        ["debug=fast", "+experiment=clip_mix"],
    ):
        fast, _ = compose_config(debug_last(typed))
        assert [s.num_steps(1, 1) for s in fast.train.stages] == [2]  # one stage of 64 samples / batch 32
        assert (fast.data.build_size, fast.data.num_workers, fast.eval.bootstrap_samples) == (200, 0, 20)
        assert fast.mix == full.mix and fast.model == full.model  # the experiment itself is unchanged
    assert sum(s.num_steps(1, 1) for s in full.train.stages) > 100
    assert main(["debug=fast", "+experiment=clip_mix", "--cfg", "job"]) == 0  # the CLI path: no "+", debug typed first
    shown = OmegaConf.to_container(OmegaConf.create(capsys.readouterr().out))
    assert shown["train"]["stages"] == [{**shown["train"]["stages"][0], "samples": 64, "batch_size": 32}]
    assert shown["data"]["build_size"] == 200


def test_no_package_changes_the_environment_at_import_and_the_entry_point_sets_passive_openmp():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = ROOT
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, train_clip, train_clip.config, train_dit, pipeline.cli, evals, recaption, "
            "report; print(os.environ.get('OMP_WAIT_POLICY'))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == "None"
    entered = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; from pipeline.cli import main; sys.argv = ['x']; main(['--help']); "
            "print(os.environ.get('OMP_WAIT_POLICY'))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert entered.stdout.strip().splitlines()[-1] == "PASSIVE"
    kept = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from pipeline.cli import passive_openmp; passive_openmp(); "
            "print(os.environ['OMP_WAIT_POLICY'])",
        ],
        env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert kept.stdout.strip() == "ACTIVE"  # the user's own setting wins
