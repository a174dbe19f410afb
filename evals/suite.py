"""Run configured evaluation tasks for one checkpoint and write one record per task."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import torch

from evals.config import EvalConfig, TaskConfig
from evals.datasets import build_dataset
from evals.diagnostics import shard_diagnostics
from evals.embeddings import text_context_length
from evals.identity import model_fingerprint, preprocess_identity, tokenizer_identity
from evals.records import build_record, record_stem, write_record
from evals.results import TaskResult
from evals.retrieval import evaluate_retrieval
from evals.zeroshot import evaluate_zeroshot_classification

log = logging.getLogger(__name__)


def load_open_clip(model_name: str, pretrained: Optional[str] = None, device: str = "cpu") -> Tuple[torch.nn.Module, Any, Any]:
    """(model, tokenizer, eval preprocess) from ``open_clip.create_model_and_transforms(name, pretrained=PATH)``."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    return model.eval(), open_clip.get_tokenizer(model_name), preprocess


def model_info(model: torch.nn.Module, tokenizer: Any, preprocess: Any, cfg: EvalConfig, model_id: Optional[str] = None) -> Dict[str, Any]:
    """Identity of what produced the numbers: weights id (sha256 of the state dict unless given), preprocessing, tokenizer."""
    context_length = text_context_length(model, tokenizer, cfg)
    return {
        "weights_id": model_id or model_fingerprint(model),
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "preprocess": preprocess_identity(preprocess),
        "tokenizer": tokenizer_identity(tokenizer, context_length),
        "context_length": context_length,
        "precision": cfg.precision,
    }


def run_diagnostics(model: torch.nn.Module, tokenizer: Any, preprocess: Any, task: TaskConfig, cfg: EvalConfig) -> TaskResult:
    """Caption diagnostics of project shards as a TaskResult (metric: mean image-text cosine per source)."""
    from evals.datasets import project_shards

    data = project_shards(task.resolved_path(), task.name, task.max_samples)
    context_length = text_context_length(model, tokenizer, cfg)
    stats, per_pair = shard_diagnostics(data.shards, tokenizer, context_length, cfg, model, preprocess, max_samples=task.max_samples)
    result = TaskResult("caption_diagnostics", data.describe(), n={s: v["n_captions"] for s, v in stats.items()}, extra={"sources": stats})
    for source, values in per_pair.items():
        result.set_metric(f"{source}_mean_cosine", values)
    result.add_intervals(cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    return result


def run_task(model: torch.nn.Module, tokenizer: Any, preprocess: Any, task: TaskConfig, cfg: EvalConfig,
             model_id: Optional[str] = None) -> TaskResult:
    """Evaluate one configured task."""
    if task.task == "caption_diagnostics":
        return run_diagnostics(model, tokenizer, preprocess, task, cfg)
    data = build_dataset(task)
    if task.task == "zeroshot_classification":
        return evaluate_zeroshot_classification(model, tokenizer, preprocess, data, cfg, model_id)
    return evaluate_retrieval(model, tokenizer, preprocess, data, cfg, model_id, task=task.task)


def evaluate_checkpoint(model: torch.nn.Module, tokenizer: Any, preprocess: Any, cfg: EvalConfig, checkpoint: str,
                        model_id: Optional[str] = None, write: bool = True, on_exists: str = "raise") -> List[Dict[str, Any]]:
    """Run every task of ``cfg.tasks``; returns the records (written to ``cfg.records_dir`` when ``write``)."""
    info = model_info(model, tokenizer, preprocess, cfg, model_id)
    records = []
    for task in cfg.tasks:
        log.info("evaluating %s on %s (%s)", checkpoint, task.name, task.task)
        result = run_task(model, tokenizer, preprocess, task, cfg, info["weights_id"])
        record = build_record(result, checkpoint, info, cfg)
        record["task_name"] = task.name
        if write:
            record["path"] = write_record(record, cfg.records_dir, result.per_query,
                                          stem=record_stem(checkpoint, task.name), on_exists=on_exists)
        records.append(record)
    return records
