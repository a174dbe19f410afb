"""The eval stage: load the trained family's export as the kind of model it produces and run every configured task.

Key: the train stage's hash, the eval settings that change numbers (declared on each field) and the tasks, with
paths under the data stage's folder written as ``@data`` so moving ``run.out_root`` changes nothing (an evaluator
named by experiment enters as that name plus the content of its export under ``run.out_root``). One record per
task in the stage folder; on rank 0 they are then published to ``{run.results_dir}/records`` with the run's
provenance (every time, so a deleted published record comes back; never overwriting one).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional

from harness_infra.errors import ConfigError
from harness_infra.stagecache import key_fields
from pipeline.families import family_of
from pipeline.infos import DataInfo, EvalInfo, TrainInfo
from pipeline.publish import publish_records
from pipeline.registry import RunContext, Stage
from pipeline.stages.data import shard_dir
from pipeline.stages.train import recipe_hash

DATA_PLACEHOLDER = "@data"


def resolve_task_paths(cfg: Any, data_info: DataInfo) -> List[Any]:
    """Eval tasks with a leading ``@data`` in their path replaced by the data stage's shard folder."""
    tasks = []
    folder = shard_dir(data_info)
    for task in cfg.eval.tasks:
        if task.path.startswith(DATA_PLACEHOLDER):
            if not folder:
                raise ConfigError(
                    f"eval task {task.name}: path {task.path!r} needs a built data set, but data.builder=none"
                )
            task = dataclasses.replace(task, path=folder + task.path[len(DATA_PLACEHOLDER) :])
        tasks.append(task)
    return tasks


def cache_under_out_root(cache_dir: Optional[str], out_root: str) -> Optional[str]:
    """The embedding cache of a pipeline run: a relative ``eval.cache_dir`` lives under ``run.out_root`` (so a run
    pointed elsewhere writes nothing into the working directory); an absolute one, or null (no cache), as given."""
    return cache_dir if cache_dir is None or os.path.isabs(cache_dir) else os.path.join(out_root, cache_dir)


def key(ctx: RunContext) -> Dict[str, Any]:
    """What determines the eval numbers: the trained weights, the tasks, the statistics settings."""
    from evals.tasks.datasets import task_fingerprint

    data = ctx.output(DataInfo)
    folder = shard_dir(data) or "\0"
    resolved = resolve_task_paths(ctx.cfg, data)
    tasks = [dataclasses.replace(t, path=t.path.replace(folder, DATA_PLACEHOLDER)) for t in resolved]
    # sets outside the data stage's folder (CIFAR-10, Flickr8k, user sets) enter by content: an in-place edit re-evaluates
    outside = {t.name: task_fingerprint(t) for t in resolved if not t.path.startswith(folder)}
    key = {
        "train_hash": ctx.output(TrainInfo).hash,
        "eval": key_fields(dataclasses.replace(ctx.cfg.eval, tasks=tasks)),
        "data_fingerprint": data.fingerprint,
        "eval_sets": outside,
    }
    scored = [t for t in resolved if getattr(t, "evaluator", None) or getattr(t, "evaluator_experiment", None)]
    if scored:  # an evaluator's weights decide the numbers: a retrained evaluator re-runs the evaluation
        from evals.tasks.t2i import evaluator_fingerprint, resolve_evaluator

        key["evaluators"] = {
            t.name: evaluator_fingerprint(resolve_evaluator(t, ctx.cfg.run.out_root).evaluator) for t in scored
        }
    return key


def run(ctx: RunContext, out_dir: Optional[str]) -> EvalInfo:
    """Evaluate the export on every task; one record per task under ``out_dir/records``."""
    from evals.tasks.suite import evaluate_checkpoint
    from evals.tasks.t2i import resolve_evaluator

    cfg = ctx.cfg
    tasks = [resolve_evaluator(t, cfg.run.out_root) for t in resolve_task_paths(cfg, ctx.output(DataInfo))]
    eval_cfg = dataclasses.replace(
        cfg.eval,
        tasks=tasks,
        records_dir=os.path.join(out_dir, "records"),
        cache_dir=cache_under_out_root(cfg.eval.cache_dir, cfg.run.out_root),
    )
    evaluable = family_of(cfg).load(ctx.output(TrainInfo).export_dir, eval_cfg.device)
    records = evaluate_checkpoint(evaluable, eval_cfg, checkpoint=cfg.experiment, on_exists="new_name")
    return EvalInfo(records=[r["path"] for r in records], metrics={r["task_name"]: r["metrics"] for r in records})


def publish(ctx: RunContext, info: EvalInfo) -> EvalInfo:
    """Publish the stage's records into results/records (skipping those already published from this output)."""
    published = publish_records(ctx.cfg, ctx.resolved, ctx.overrides, ctx.infos, info, recipe_hash(ctx))
    return info.replace(published=published)


STAGE = Stage(name="eval", needs=("data", "train"), output=EvalInfo, key=key, run=run, ranks="rank0", publish=publish)
