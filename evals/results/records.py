"""One JSON record per (checkpoint, task), plus a ``.queries.npz`` sidecar of per-query values.

Record fields: schema, checkpoint, task, dataset (name, fingerprint, sizes), model (weights id, preprocessing,
tokenizer, context length), metrics, intervals (per-query metrics: bootstrap percentile, with level and resamples;
whole-set metrics such as FID: the method named in whole_set_interval_methods), undefined
(metric -> reason), n, extra, eval settings, created (UTC). Writes go through the one atomic writer with ``overwrite=False`` (temporary file, then a hard
link that fails if the name exists; mode 0644 under umask 022) and never overwrite: ``on_exists="raise"`` raises FileExistsError,
``"new_name"`` writes NAME-1.json, NAME-2.json, ... The sidecar keeps the per-query values (``npz``, loaded
with ``allow_pickle=False``) so two checkpoints can be compared later with a paired test.

A record and its sidecar are one unit: the sidecar is written first, the JSON (which names it) last, and a reader
finds a record only through its JSON. Every write holds the folder's lock (``RECORDS_LOCK``, via
``harness_infra.locks.exclusive``), and under it first removes what a killed writer left: temporary ``.tmp-*`` files
and sidecars whose JSON was never written (orphans). So a kill at any point leaves either both files or nothing a
later writer trips over, and two processes writing the same name get NAME.json and NAME-1.json, never an error.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import re
from typing import Any, Dict, Optional

import numpy as np

from evals.results.bootstrap import PairedResult, QueryValues, Resampling, paired_test
from evals.results.task_result import TaskResult
from harness_infra.atomic import atomic_write, atomic_write_text, clear_partial_files
from harness_infra.locks import exclusive

log = logging.getLogger(__name__)
SCHEMA = "evals.record/1"
SIDECAR_SUFFIX = ".queries.npz"
RECORDS_LOCK = ".records.lock"  # in the records folder: every writer of the folder holds it


def record_stem(checkpoint: str, task: str) -> str:
    """File-name stem ``{checkpoint}__{task}`` with anything outside [A-Za-z0-9._-] replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{checkpoint}__{task}").strip("_")


def build_record(result: TaskResult, checkpoint: str, model: Dict[str, Any], cfg: Any) -> Dict[str, Any]:
    """The JSON-ready record of one task result (``model``: weights id, preprocessing, tokenizer identities;
    ``cfg``: the ``EvalConfig`` dataclass that made it, whose settings and resampling fields are recorded)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("tasks", "cache_dir", "records_dir")}
    return {
        "schema": SCHEMA,
        "checkpoint": checkpoint,
        "task": result.task,
        "dataset": result.dataset,
        "model": model,
        "metrics": result.metrics,
        "intervals": {k: (list(v) if v is not None else None) for k, v in result.intervals.items()},
        "interval_method": {
            "kind": "percentile bootstrap over queries",
            "confidence": cfg.confidence,
            "resamples": cfg.bootstrap_samples,
            "seed": cfg.seed,
        },
        "whole_set_interval_methods": dict(result.interval_methods),
        "undefined": result.undefined,
        "n": result.n,
        "extra": result.extra,
        "eval": settings,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _free_path(folder: str, stem: str, on_exists: str) -> str:
    """``folder/stem.json``, or with on_exists="new_name" the first free ``stem-N.json``."""
    path = os.path.join(folder, stem + ".json")
    if on_exists == "raise" or not os.path.exists(path):
        return path
    index = 1
    while os.path.exists(os.path.join(folder, f"{stem}-{index}.json")):
        index += 1
    return os.path.join(folder, f"{stem}-{index}.json")


def records_lock(folder: str) -> str:
    """The lock file of a records folder (``harness_infra.locks.exclusive``; re-entrant, so a caller may hold it)."""
    return os.path.join(folder, RECORDS_LOCK)


def clear_orphans(folder: str) -> int:
    """Remove what killed writers left in a records folder: ``.tmp-*`` files and sidecars without their JSON; returns
    how many files were removed (logged). Call holding ``records_lock(folder)``."""
    removed = clear_partial_files(folder)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(SIDECAR_SUFFIX) and not os.path.exists(
            os.path.join(folder, name[: -len(SIDECAR_SUFFIX)] + ".json")
        ):
            os.unlink(os.path.join(folder, name))
            removed += 1
            log.info(
                "removed %s: a per-query file whose record was never written (a killed writer)",
                os.path.join(folder, name),
            )
    return removed


def write_record(
    record: Dict[str, Any],
    folder: str,
    per_query: Optional[Dict[str, QueryValues]] = None,
    stem: Optional[str] = None,
    on_exists: str = "raise",
) -> str:
    """Write the record (and its per-query sidecar) as one unit, without ever overwriting; returns the JSON path.

    Holds ``records_lock(folder)`` and clears orphans first (see the module docstring). Raises ValueError for an
    unknown ``on_exists``, FileExistsError with ``on_exists="raise"`` when ``{stem}.json`` exists."""
    if on_exists not in ("raise", "new_name"):
        raise ValueError(f"on_exists={on_exists!r}; choose raise or new_name")
    os.makedirs(folder, exist_ok=True)
    with exclusive(records_lock(folder)):
        clear_orphans(folder)
        path = _free_path(folder, stem or record_stem(record["checkpoint"], record["task"]), on_exists)
        if os.path.exists(path):
            raise FileExistsError(
                f"record {path} exists; refusing to overwrite (use on_exists='new_name' or remove it)"
            )
        sidecar = path[: -len(".json")] + SIDECAR_SUFFIX
        if per_query:
            arrays = {f"values__{k}": v.values for k, v in per_query.items()}
            arrays.update({f"groups__{k}": v.groups for k, v in per_query.items() if v.groups is not None})
            atomic_write(sidecar, lambda h: np.savez_compressed(h, **arrays), overwrite=False)
            record = {**record, "per_query_file": os.path.basename(sidecar)}
        try:
            atomic_write_text(
                path, json.dumps(record, indent=2, sort_keys=True, default=_jsonable) + "\n", overwrite=False
            )
        except BaseException:
            if per_query and os.path.exists(sidecar):
                os.unlink(sidecar)
            raise
    return path


def _jsonable(value: Any) -> Any:
    """JSON fallback for numpy scalars and tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_record(path: str) -> Dict[str, Any]:
    """The record dict of a JSON file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_per_query(path: str) -> Dict[str, QueryValues]:
    """Per-query values of a record (from its sidecar), by metric name."""
    record = read_record(path)
    name = record.get("per_query_file")
    if not name:
        raise FileNotFoundError(f"record {path} has no per-query file")
    with np.load(os.path.join(os.path.dirname(path), name), allow_pickle=False) as data:
        keys = [k[len("values__") :] for k in data.files if k.startswith("values__")]
        return {
            k: QueryValues(data[f"values__{k}"], data[f"groups__{k}"] if f"groups__{k}" in data.files else None)
            for k in keys
        }


def compare_records(path_a: str, path_b: str, cfg: Optional[Any] = None) -> Dict[str, PairedResult]:
    """Paired test (A minus B) for every per-query metric both records share ({} when either has none: whole-set
    metrics only); same task on the same data required.
    ``cfg``: resampling settings (an ``EvalConfig`` or ``Resampling``; default ``Resampling()``)."""
    cfg = cfg or Resampling()
    a, b = read_record(path_a), read_record(path_b)
    if a["task"] != b["task"] or a["dataset"].get("fingerprint") != b["dataset"].get("fingerprint"):
        raise ValueError(
            f"records {path_a} and {path_b} are not the same task on the same data set (fingerprints differ)"
        )
    if not a.get("per_query_file") or not b.get("per_query_file"):
        return {}  # whole-set metrics only (FID, KID): nothing to pair
    values_a, values_b = read_per_query(path_a), read_per_query(path_b)
    return {
        name: paired_test(
            values_a[name], values_b[name], cfg.bootstrap_samples, cfg.permutation_samples, cfg.confidence, cfg.seed
        )
        for name in sorted(set(values_a) & set(values_b))
    }
