"""Atomic, resumable training checkpoints that load with ``torch.load(..., weights_only=True)``.

A checkpoint holds only tensors and primitive containers: model, optimizer, GradScaler and schedule state,
the training position (stage, step, samples seen, data epoch and batch within the epoch) and the RNG
states of every rank (python, numpy and torch, converted to tensors and lists) and the run's resumes so far
(``resumes``). Files are written to a
temporary name and renamed with ``os.replace``, so a killed run never leaves a half-written checkpoint
under a real name.
"""

from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from harness_infra.atomic import atomic_torch_save
from harness_infra.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d{8,})\.pt$")


@dataclass
class Position:
    """Where training stands: stage, optimizer steps (in the stage and in total), samples and data position."""

    stage: int = 0
    stage_step: int = 0
    step: int = 0
    samples_seen: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def as_dict(self) -> Dict[str, int]:
        """Plain dict for the checkpoint."""
        return asdict(self)


def capture_rng() -> Dict[str, Any]:
    """This process's python, numpy and torch (CPU and CUDA) RNG states as tensors and primitives."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resumes(payload: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The run's resumes when it continues from ``payload`` (None: a fresh run, []): the checkpoint's own list (a run
    resumed before) plus this one, ``{"from_step": the checkpoint's step, "at": now as a UTC ISO 8601 string}``. A
    trainer stores the list in every checkpoint it writes (key ``resumed``) and returns it in its result."""
    if payload is None:
        return []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return [*payload.get("resumed", []), {"from_step": int(payload["position"]["step"]), "at": now}]


def checkpoint_path(out_dir: str, step: int) -> str:
    """Path of the checkpoint written after optimizer step ``step``."""
    return os.path.join(out_dir, CHECKPOINT_DIR, f"step_{step:08d}.pt")


def list_checkpoints(out_dir: str) -> List[str]:
    """Complete checkpoints in out_dir/checkpoints, oldest first (temporary files are ignored)."""
    folder = os.path.join(out_dir, CHECKPOINT_DIR)
    if not os.path.isdir(folder):
        return []
    found = sorted((int(m.group(1)), name) for name in os.listdir(folder) if (m := _STEP_FILE.match(name)))
    return [os.path.join(folder, name) for _, name in found]


def resolve_resume(resume: Optional[str], out_dir: str) -> Optional[str]:
    """The checkpoint to resume from: None (fresh), ``latest`` (newest, or None when there is none) or a path."""
    existing = list_checkpoints(out_dir)
    if resume is None:
        if existing:
            raise ConfigError(
                f"train.resume=null but {out_dir} already holds checkpoints; set train.resume=latest or use another out_dir"
            )
        return None
    if resume == "latest":
        return existing[-1] if existing else None
    if not os.path.isfile(resume):
        raise ConfigError(f"train.resume={resume!r} is neither 'latest' nor an existing checkpoint file")
    return resume


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint with weights_only=True; refuse an unknown format."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ConfigError(f"{path} is not a harness training checkpoint of format {FORMAT_VERSION}")
    return payload


def prune_checkpoints(out_dir: str, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints."""
    for path in list_checkpoints(out_dir)[:-keep]:
        os.remove(path)


def write_checkpoint(payload: Dict[str, Any], out_dir: str, position: "Position", keep: int) -> str:
    """Write ``payload`` (with ``format`` set) as the checkpoint of ``position`` atomically (temporary file + rename),
    keep the newest ``keep``; returns its path. Call on rank 0; every trainer's checkpoints go through here."""
    path = checkpoint_path(out_dir, position.step)
    atomic_torch_save({"format": FORMAT_VERSION, **payload}, path)
    prune_checkpoints(out_dir, keep)
    log.info("checkpoint %s (step %d, %d samples)", path, position.step, position.samples_seen)
    return path
