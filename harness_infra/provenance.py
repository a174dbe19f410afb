"""Provenance attached to every result record: code version, packages, device, config hash."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Dict, Optional

import torch

PACKAGES = (
    "torch",
    "torchvision",
    "open_clip_torch",
    "webdataset",
    "hydra-core",
    "numpy",
    "pandas",
    "torchmetrics",
    "diffusers",
    "pillow",
)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_state(root: str = REPO_ROOT) -> Dict[str, Optional[object]]:
    """{commit, dirty} of the checkout (None when git or the repository is unavailable)."""

    def git(*args: str) -> Optional[str]:
        try:
            return subprocess.run(
                ["git", "-C", root, *args], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> Dict[str, Optional[str]]:
    """Installed versions of the packages that decide the numbers."""
    versions: Dict[str, Optional[str]] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_description() -> Dict[str, object]:
    """CPU/GPU the run used."""
    info: Dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def provenance() -> Dict[str, object]:
    """Everything above in one dict."""
    return {"git": git_state(), "packages": package_versions(), "device": device_description()}
