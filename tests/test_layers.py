"""The layering of the packages is enforced: import-linter's contracts in pyproject.toml hold, ignore nothing, and bite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = tuple(
    tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["importlinter"]["root_packages"]
)


def lint_imports(cwd: str) -> subprocess.CompletedProcess:
    """``lint-imports`` (import-linter's CLI) run in ``cwd`` with ``cwd`` first on the import path."""
    env = {**os.environ, "PYTHONPATH": cwd}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_contracts_hold_and_ignore_no_import():
    config = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["importlinter"]
    assert all("ignore_imports" not in contract for contract in config["contracts"])
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout
    layers = config["contracts"][0]["layers"]
    assert "recaption | train_clip | train_dit | evals" in layers  # evals is one package on one layer
    assert not any(layer.startswith("evals.") for layer in layers)


def test_an_upward_import_breaks_the_layers(tmp_path):
    for package in PACKAGES:
        shutil.copytree(os.path.join(ROOT, package), tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    mixer = tmp_path / "captiondata" / "mixer.py"
    mixer.write_text(
        mixer.read_text() + "\nfrom pipeline.runner import run_experiment  # an upward import: a cycle in the making\n"
    )
    done = lint_imports(str(tmp_path))
    assert done.returncode != 0 and "captiondata.mixer -> pipeline.runner" in done.stdout


def test_evals_importing_the_report_or_the_pipeline_breaks_the_layers(tmp_path):
    for package in PACKAGES:
        shutil.copytree(os.path.join(ROOT, package), tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    topk = tmp_path / "evals" / "tasks" / "topk.py"
    topk.write_text(topk.read_text() + "\nfrom report.tables import write_tables  # a task reaching up to the report\n")
    done = lint_imports(str(tmp_path))
    assert done.returncode != 0 and "evals.tasks.topk -> report.tables" in done.stdout


def test_the_command_aliases_reach_the_front_door_and_the_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    helped = subprocess.run(
        [sys.executable, "-m", "evals.run", "--help"],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert helped.returncode == 0 and "+experiment=" in helped.stdout + helped.stderr
    tables = subprocess.run(
        [sys.executable, "-m", "evals.tables", "--results-dir", str(tmp_path)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tables.returncode == 0 and f"no records in {tmp_path}/records" in tables.stdout
