"""The layering of the packages is enforced: import-linter's contracts in pyproject.toml hold, ignore nothing, and bite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lint_imports(cwd: str) -> subprocess.CompletedProcess:
    """``lint-imports`` (import-linter's CLI) run in ``cwd`` with ``cwd`` first on the import path."""
    env = {**os.environ, "PYTHONPATH": cwd}
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_contracts_hold_and_ignore_no_import():
    config = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["importlinter"]
    assert all("ignore_imports" not in contract for contract in config["contracts"])
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    for package in ("harness_infra", "captiondata", "towers", "training", "recaption", "train_clip", "train_dit", "evals", "pipeline"):
        shutil.copytree(os.path.join(ROOT, package), tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    mixer = tmp_path / "captiondata" / "mixer.py"
    mixer.write_text(mixer.read_text() + "\nfrom pipeline.runner import run_experiment  # an upward import: a cycle in the making\n")
    done = lint_imports(str(tmp_path))
    assert done.returncode != 0 and "captiondata.mixer -> pipeline.runner" in done.stdout
