"""The experiment pipeline behind ``python -m evals.run``: data -> train -> eval -> record -> tables."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Dict, List

from captiondata.build import build_dataset, builder_settings
from captiondata.config import DataConfig
from captiondata.reader import expand_shards
from evals.schema import HarnessConfig
from evals.stagecache import StageDir, content_hash

log = logging.getLogger("evals.run")
STAGE_VERSION = {"data": 1, "train": 1, "eval": 1}


def rank() -> int:
    """This process's global rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def run_stage(cfg: HarnessConfig, stage: StageDir, step: str, work: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """Return the stage's recorded info: from its marker when complete (unless rerun), else by running ``work``."""
    if stage.complete() and cfg.run.rerun != stage.stage:
        log.info("%s %s: complete in %s, skipped", step, stage.stage, stage.path)
        return stage.info()
    log.info("%s %s: running in %s", step, stage.stage, stage.path)
    stage.prepare(force=cfg.run.rerun == stage.stage and stage.complete())
    started = time.perf_counter()
    info = work()
    info["wall_time_s"] = round(time.perf_counter() - started, 2)
    return stage.finish(info)


def shard_fingerprint(manifests: Dict[str, Any]) -> str:
    """Hash of every split's shard names, sample counts and SHA-256s."""
    return content_hash({split: [(s["name"], s["count"], s["sha256"]) for s in m["shards"]] for split, m in sorted(manifests.items())})


def user_shard_fingerprint(data: DataConfig) -> Dict[str, Any]:
    """Shard specs and a fingerprint (local: names and sizes; remote: names) of user-supplied shards."""
    listing = {}
    for split in ("train", "val", "test"):
        spec = getattr(data, f"{split}_shards")
        if spec:
            urls = expand_shards(spec)
            listing[split] = [(u, os.path.getsize(u) if os.path.isfile(u) else None) for u in urls]
    return {"shards": {s: getattr(data, f"{s}_shards") for s in listing}, "fingerprint": content_hash(listing)}


def data_stage(cfg: HarnessConfig) -> Dict[str, Any]:
    """Build the configured data set into its keyed folder (or fingerprint user shards)."""
    if cfg.data.builder == "none":
        return {"stage": "data", "shard_dir": None, **user_shard_fingerprint(cfg.data)}
    settings = {**builder_settings(cfg.data), "stage_version": STAGE_VERSION["data"]}
    stage = StageDir(cfg.run.out_root, "data", cfg.data.name, settings)

    def work() -> Dict[str, Any]:
        built = build_dataset(dataclasses.replace(cfg.data, shard_dir=stage.path), overwrite=True)
        return {"shard_dir": stage.path, "fingerprint": shard_fingerprint(built["manifests"]),
                "samples": {split: m["samples"] for split, m in built["manifests"].items()}, "build_seconds": built["build_seconds"]}

    if rank() != 0:
        return wait_for(stage)
    return run_stage(cfg, stage, "[1/4]", work)


def wait_for(stage: StageDir, timeout_s: float = 24 * 3600) -> Dict[str, Any]:
    """Block a non-zero rank until rank 0 completes ``stage``."""
    deadline = time.monotonic() + timeout_s
    while not stage.complete():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank()}: {stage.path} was not completed by rank 0 in {timeout_s:.0f} s")
        time.sleep(2.0)
    return stage.info()


def data_for_training(cfg: HarnessConfig, data_info: Dict[str, Any]) -> DataConfig:
    """The data config pointing at the built (or user) shards."""
    if data_info.get("shard_dir"):
        return dataclasses.replace(cfg.data, shard_dir=data_info["shard_dir"])
    return cfg.data


def run_experiment(cfg: HarnessConfig, resolved: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """Walk data -> train -> eval -> record -> tables for one composed config; returns the outcome."""
    timings: Dict[str, float] = {}
    data_info = data_stage(cfg)
    timings["data"] = data_info.get("wall_time_s", 0.0)
    outcome: Dict[str, Any] = {"data": data_info, "table": None}
    if cfg.run.stop_after == "data":
        return outcome
    raise NotImplementedError("train/eval stages are wired in evals.pipeline once train_clip and evals land")
