"""Walk one composed experiment's stages: skip what is complete, run what is not, under any rank layout.

For each name of ``run.stages`` the registered ``Stage`` gives a key; its folder is
``{run.out_root}/{stage}/{label}-{hash}`` (``harness_infra.stagecache.StageDir``), skipped when its marker exists
(unless ``run.rerun`` names it), otherwise prepared, run and finished with the marker written last. The typed info a
stage returns (``pipeline.infos``, with ``hash``, ``out_dir`` and ``wall_time_s``) is what later stages read; a
skipped stage's is read back from its marker.

A stage about to run in its folder first removes the temporary ``.tmp-*`` files a killed earlier run left anywhere in
it (shards, checkpoints, records), holding the folder's lock; under torchrun a stage whose every rank writes
(``ranks="all"``) keeps its own per-file clean-up instead (the other ranks may be writing already).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List

from harness_infra.atomic import clear_partial_files
from harness_infra.locks import exclusive
from harness_infra.ranks import is_main, rank0_builds, world_size
from harness_infra.stagecache import StageDir
from pipeline.infos import StageInfo, TablesInfo
from pipeline.registry import RunContext, Stage, stages

log = logging.getLogger("pipeline")


def run_cached(ctx: RunContext, stage: Stage, step: str) -> StageInfo:
    """The stage's info: from its marker when complete (unless rerun), else by running it, by its rank policy."""
    cfg = ctx.cfg
    key = stage.key(ctx) if stage.key is not None else None
    if key is None:
        log.info("%s %s: running (not cached)", step, stage.name)
        return timed(lambda: stage.run(ctx, None))
    label = stage.label(ctx) if stage.label is not None else cfg.experiment
    folder = StageDir(cfg.run.out_root, stage.name, label, {**key, "stage_version": stage.version})
    forced = cfg.run.rerun == stage.name

    def read() -> StageInfo:
        return stage.output.from_json(folder.info()).replace(out_dir=folder.path)

    def is_settled() -> bool:  # a complete output that asks to run again (failed samples to retry) is not skipped
        return stage.settled is None or stage.settled(stage.output.from_json(folder.info()))

    def build() -> StageInfo:
        with exclusive(folder.lock_path):  # parallel jobs of a sweep share stage folders: one builds, the others wait
            if folder.complete() and not forced and is_settled():
                log.info("%s %s: complete in %s, skipped", step, stage.name, folder.path)
                return read()
            log.info("%s %s: running in %s", step, stage.name, folder.path)
            folder.prepare(force=forced and folder.complete())  # a retry of an unsettled output keeps its folder
            if stage.ranks != "all" or world_size() == 1:  # this process alone writes the folder now
                clear_partial_files(folder.path, recursive=True)
            info = timed(lambda: stage.run(ctx, folder.path))
            folder.finish(info.to_json())
            return read()

    if stage.ranks == "rank0_builds":
        return rank0_builds(build, folder.complete, read, what=folder.marker)
    if stage.ranks == "all" and not is_main():  # a collective stage: every rank works, rank 0 writes the marker
        return (
            read()
            if folder.complete() and is_settled()
            else timed(lambda: stage.run(ctx, folder.path)).replace(hash=folder.hash, out_dir=folder.path)
        )
    return build()


def timed(work: Callable[[], StageInfo]) -> StageInfo:
    """``work()``'s info with its wall time."""
    started = time.perf_counter()
    info = work()
    return info.replace(wall_time_s=round(time.perf_counter() - started, 2))


def run_experiment(cfg: Any, resolved: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """Walk ``cfg.run.stages`` for one composed config; returns every stage's typed info by name (and ``table``, the
    tables stage's table or None)."""
    registry = stages()
    ctx = RunContext(cfg, resolved, overrides)
    names = cfg.run.stages
    last = names.index(cfg.run.stop_after) if cfg.run.stop_after else len(names) - 1
    for index, name in enumerate(names[: last + 1]):
        stage = registry[name]
        if stage.ranks == "rank0" and not is_main():
            break
        info = run_cached(ctx, stage, f"[{index + 1}/{len(names)}]")
        if stage.publish is not None and is_main():
            info = stage.publish(ctx, info)
        ctx.infos[name] = info
    tables = ctx.optional(TablesInfo)
    return {**ctx.infos, "table": tables.table if tables is not None else None}
