"""CI runs README.md's test command exactly as README.md writes it (.ci/run extracts the block and runs it)."""

from __future__ import annotations

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_test_block() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    after = text.split("<!-- ci: test command -->", 1)[1]
    return re.search(r"```bash\n(.*?)\n```", after, re.S).group(1)


def test_ci_runs_the_readme_block_it_extracts():
    printed = subprocess.run(
        ["bash", os.path.join(ROOT, ".ci", "run"), "--print-command"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.rstrip("\n")
    assert printed == readme_test_block()
    assert printed.endswith("python -m pytest -q") and 'pip install -e ".[dev]"' in printed
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as handle:
        script = handle.read()
    assert 'bash -euo pipefail -c "$readme"' in script  # what runs is the extracted block
    assert f"TEST_COMMAND='{readme_test_block()}'" in script  # compared with the command written out verbatim
