"""Publish an experiment's eval records into ``results/records`` with the run's provenance attached.

Publishing holds the records folder's lock (``evals.results.records.records_lock``) from the check for an earlier
publication of the same output to the last write, so two runs that finished the same eval stage publish it once.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from evals.results.records import read_per_query, read_record, records_lock, write_record
from harness_infra.locks import exclusive
from harness_infra.provenance import provenance
from harness_infra.stagecache import content_hash
from pipeline.infos import EvalInfo, StageInfo

RECORDS_DIR = "records"


def recaption_section(infos: Dict[str, StageInfo]) -> Optional[Dict[str, Any]]:
    """The recaption stage's coverage, failures by reason and (scenes) caption quality per split (None without a
    recaption stage)."""
    info = infos.get("recaption")
    if info is None:
        return None
    return {
        split: {
            "samples": stats["samples"],
            "with_recaption": stats["with_recaption"],
            "coverage": stats["with_recaption"] / stats["samples"] if stats["samples"] else None,
            "failed": stats["failed"],
            "input_skipped": stats.get("input_skipped", {}),
            "quality": stats.get("quality"),  # faithfulness to the scene graph (scenes only: recaption.quality)
        }
        for split, stats in (info.splits or {}).items()
    }


def run_section(
    cfg: Any,
    resolved: Dict[str, Any],
    overrides: List[str],
    infos: Dict[str, StageInfo],
    eval_info: EvalInfo,
    recipe_hash: Optional[str] = None,
) -> Dict[str, Any]:
    """What ran, how, on what, where and how long: attached to every record of the run. ``p`` is the label,
    ``realised_p`` the share of trained samples whose text was the original, ``mixture`` the checked mixture
    (``captiondata.realised``: coverage, fallbacks, tolerances), ``recaption`` the recaptioner's coverage and failures,
    ``reduction`` / ``reduction_label`` the caption reductions and positives per image (``MixConfig.reduction``)."""
    data_info, train_info = infos["data"], infos["train"]
    return {
        "experiment": cfg.experiment,
        "command": "python -m evals.run " + " ".join(overrides),
        "p": cfg.mix.p_original,
        "p_meaning": "probability of the ORIGINAL caption per sample",
        "strategy": cfg.mix.strategy,
        "reduction": cfg.mix.reduction(),  # {} = whole captions, one text per image (captiondata.config.MixConfig)
        "reduction_label": cfg.mix.reduction_label(),  # "full", "recap sub_caption K=1", "n=2 positives", ...
        "model": cfg.model.name,
        "data": cfg.data.name,
        "seed": cfg.train.seed,
        "samples_seen": train_info.samples_seen,
        "global_batch": train_info.global_batch,
        "steps": train_info.steps,
        "resumed": train_info.resumed,  # [{"from_step", "at"}], [] never resumed; None: trained before it was recorded
        "train_samples_per_s": train_info.samples_per_s,
        "config_hash": content_hash(resolved),
        "resolved_config": resolved,
        "data_fingerprint": data_info.fingerprint,
        "realised_p": (train_info.mixture or {}).get("realised_original_fraction"),
        "mixture": train_info.mixture,
        "recaption": recaption_section(infos),
        "trainer": cfg.trainer,
        "train_hash": train_info.hash,
        "recipe_hash": recipe_hash,  # the train key without train.seed: the seeds of one table row share it
        "eval_hash": eval_info.hash,
        "wall_time_s": {name: info.wall_time_s for name, info in {**infos, "eval": eval_info}.items()},
        **provenance(),
    }


def publish_records(
    cfg: Any,
    resolved: Dict[str, Any],
    overrides: List[str],
    infos: Dict[str, StageInfo],
    eval_info: EvalInfo,
    recipe_hash: Optional[str] = None,
) -> List[str]:
    """Copy each eval record (and its per-query sidecar) into results/records; never overwrite.

    A record already published from the same eval stage output is left alone; a re-evaluation is
    published under a new name (NAME-1.json, ...) and the tables use the newest.
    """
    folder = os.path.join(cfg.run.results_dir, RECORDS_DIR)
    run = run_section(cfg, resolved, overrides, infos, eval_info, recipe_hash)
    os.makedirs(folder, exist_ok=True)
    with exclusive(records_lock(folder)):  # a parallel identical run finds this one's records, never half of them
        return [publish_one(source, folder, cfg.experiment, eval_info.hash, run) for source in eval_info.records]


def publish_one(source: str, folder: str, experiment: str, eval_hash: str, run: Dict[str, Any]) -> str:
    """Publish one eval record into ``folder`` (call holding its lock); the path of the published JSON."""
    record = read_record(source)
    stem = f"{experiment}__{record['task_name']}__{eval_hash}"
    identity = f"{os.path.abspath(source)}@{os.stat(source).st_mtime_ns}"  # a re-evaluation rewrites the source
    existing = os.path.join(folder, stem + ".json")
    if os.path.exists(existing) and read_record(existing)["run"].get("source_record") == identity:
        return existing
    per_query = read_per_query(source) if record.get("per_query_file") else None  # whole-set metrics (FID) have none
    record = {k: v for k, v in record.items() if k not in ("path", "per_query_file")}
    record["run"] = {**run, "source_record": identity}
    return write_record(record, folder, per_query, stem=stem, on_exists="new_name")
