"""The experiment pipeline behind ``python -m evals.run``: data -> train -> eval -> record -> tables."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Dict, List, Tuple

from captiondata.build import build_dataset, builder_settings
from captiondata.config import ConfigError, DataConfig
from captiondata.reader import expand_shards
from evals.schema import HarnessConfig
from evals.publish import RECORDS_DIR, publish_records
from evals.stagecache import StageDir, canonical, content_hash

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

    info = wait_for(stage) if rank() != 0 else run_stage(cfg, stage, "[1/4]", work)
    # the shards live in the stage's own (absolute) folder; markers of older versions recorded a cwd-relative path
    return {**info, "shard_dir": stage.path}


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


TRAIN_KEY_EXCLUDES = ("resume", "progress_bar", "log_every", "tensorboard", "keep_checkpoints", "checkpoint_every_steps", "threads", "device",
                      "feature_cache_dir")
DATA_KEY_EXCLUDES = ("source", "shard_dir", "train_shards", "val_shards", "test_shards", "name", "build_seed", "build_size", "scene_image_size", "samples_per_shard")


def train_key(cfg: HarnessConfig, data_info: Dict[str, Any]) -> Dict[str, Any]:
    """What determines the trained weights: model, recipe, mixer, data fingerprint and the loader's settings."""
    train = {k: v for k, v in canonical(cfg.train).items() if k not in TRAIN_KEY_EXCLUDES}
    data = {k: v for k, v in canonical(cfg.data).items() if k not in DATA_KEY_EXCLUDES}
    return {"model": cfg.model, "train": train, "mix": cfg.mix, "data": data, "data_fingerprint": data_info["fingerprint"],
            "stage_version": STAGE_VERSION["train"]}


def train_stage(cfg: HarnessConfig, data_info: Dict[str, Any]) -> Dict[str, Any]:
    """Train CLIP on the mixed captions (all ranks); a failed run resumes from its latest checkpoint."""
    from train_clip.train import train

    stage = StageDir(cfg.run.out_root, "train", cfg.experiment, train_key(cfg, data_info))
    recipe = dataclasses.replace(cfg.train, resume="latest",
                                 feature_cache_dir=cfg.train.feature_cache_dir or os.path.join(cfg.run.out_root, "features"))

    def work() -> Dict[str, Any]:
        result = train(cfg.model, recipe, data_for_training(cfg, data_info), cfg.mix, out_dir=stage.path)
        return {"train_hash": stage.hash, **canonical(result)}

    if rank() != 0:
        return work() if not stage.complete() else stage.info()
    return run_stage(cfg, stage, "[2/4]", work)


def resolve_task_paths(cfg: HarnessConfig, data_info: Dict[str, Any]) -> List[Any]:
    """Eval tasks with a leading ``@data`` in their path replaced by the data stage's shard folder."""
    tasks = []
    for task in cfg.eval.tasks:
        if task.path.startswith("@data"):
            if not data_info.get("shard_dir"):
                raise ConfigError(f"eval task {task.name}: path {task.path!r} needs a built data set, but data.builder=none")
            task = dataclasses.replace(task, path=data_info["shard_dir"] + task.path[len("@data"):])
        tasks.append(task)
    return tasks


def eval_key(cfg: HarnessConfig, train_info: Dict[str, Any], tasks: List[Any], data_info: Dict[str, Any]) -> Dict[str, Any]:
    """What determines the eval numbers: the trained weights, the tasks, the statistics settings."""
    settings = {k: v for k, v in canonical(cfg.eval).items() if k not in ("cache_dir", "records_dir", "device", "batch_size", "num_workers", "tasks")}
    tasks = [{**canonical(t), "path": t.path.replace(data_info.get("shard_dir") or "\0", "@data")} for t in tasks]
    return {"train_hash": train_info["train_hash"], "eval": settings, "tasks": tasks, "data_fingerprint": data_info["fingerprint"],
            "stage_version": STAGE_VERSION["eval"]}


def load_export(export_dir: str, device: str) -> Tuple[Any, Any, Any]:
    """(model, tokenizer, eval preprocess) of an exported checkpoint, through open_clip's own loader."""
    import open_clip

    from train_clip.models import prepare_export

    prepare_export(export_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export_dir}", device=device)
    return model.eval(), open_clip.get_tokenizer(f"local-dir:{export_dir}"), preprocess


def eval_stage(cfg: HarnessConfig, train_info: Dict[str, Any], data_info: Dict[str, Any]) -> Dict[str, Any]:
    """Evaluate the exported checkpoint on every configured task; one record per task in the stage folder."""
    from evals.suite import evaluate_checkpoint

    tasks = resolve_task_paths(cfg, data_info)
    stage = StageDir(cfg.run.out_root, "eval", cfg.experiment, eval_key(cfg, train_info, tasks, data_info))

    def work() -> Dict[str, Any]:
        eval_cfg = dataclasses.replace(cfg.eval, tasks=tasks, records_dir=os.path.join(stage.path, "records"))
        model, tokenizer, preprocess = load_export(train_info["export_dir"], eval_cfg.device)
        records = evaluate_checkpoint(model, tokenizer, preprocess, eval_cfg, checkpoint=cfg.experiment, on_exists="new_name")
        return {"eval_hash": stage.hash, "records": [r["path"] for r in records],
                "metrics": {r["task_name"]: r["metrics"] for r in records}}

    return run_stage(cfg, stage, "[3/4]", work)


def run_experiment(cfg: HarnessConfig, resolved: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """Walk data -> train -> eval -> record -> tables for one composed config; returns the outcome."""
    data_info = data_stage(cfg)
    outcome: Dict[str, Any] = {"data": data_info, "table": None}
    if cfg.run.stop_after == "data":
        return outcome
    train_info = train_stage(cfg, data_info)
    outcome["train"] = train_info
    if rank() != 0 or cfg.run.stop_after == "train":
        return outcome
    eval_info = eval_stage(cfg, train_info, data_info)
    outcome["eval"] = eval_info
    outcome["records"] = publish_records(cfg, resolved, overrides, data_info, train_info, eval_info)
    if cfg.run.stop_after == "eval":
        return outcome
    from evals.tables import write_tables

    log.info("[4/4] tables from %s", os.path.join(cfg.run.results_dir, RECORDS_DIR))
    outcome["table"] = write_tables(cfg.run.results_dir, cfg.data.name)
    return outcome
