"""The code is formatted and linted by ruff with the project's settings ([tool.ruff] in pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_format_has_nothing_to_change():
    done = ruff("format", "--check", ".")
    assert done.returncode == 0, f"run `ruff format .`:\n{done.stdout}{done.stderr}"


def test_ruff_lint_finds_nothing():
    done = ruff("check", ".")
    assert done.returncode == 0, f"run `ruff check --fix .`:\n{done.stdout}{done.stderr}"
