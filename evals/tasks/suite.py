"""Run the configured evaluation tasks for one model and write one record per task.

Each task is looked up in ``evals.tasks.registry.TASKS``; a task that evaluates another kind of model than the one
given (a text-to-image task on a CLIP, say) is a one-line ``ConfigError`` before anything runs.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from captiondata.realised import by_count
from evals.results.records import build_record, record_stem, write_record
from evals.results.task_result import TaskResult
from evals.tasks.config import EvalConfig, TaskConfig
from evals.tasks.embeddings import text_context_length
from evals.tasks.registry import GENERATOR, TASKS, ImageTextEmbedder
from harness_infra.errors import BrokenModelError, ConfigError, LabelError
from harness_infra.identity import model_fingerprint, preprocess_identity, tokenizer_identity

log = logging.getLogger(__name__)


def load_open_clip(model_name: str, pretrained: Optional[str] = None, device: str = "cpu") -> ImageTextEmbedder:
    """The embedder of ``open_clip.create_model_and_transforms(name, pretrained=PATH)`` (eval mode, eval transform)."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    return ImageTextEmbedder(model.eval(), open_clip.get_tokenizer(model_name), preprocess)


def model_info(embedder: ImageTextEmbedder, cfg: EvalConfig, model_id: Optional[str] = None) -> Dict[str, Any]:
    """Identity of what produced the numbers: weights id (sha256 of the state dict unless given), preprocessing, tokenizer
    (a generator: its weights id and description)."""
    if embedder.kind == GENERATOR:
        return {
            "weights_id": model_id or embedder.identity(),
            "class": f"{type(embedder.pipeline).__module__}.{type(embedder.pipeline).__qualname__}",
            "generator": embedder.description,
            "precision": cfg.precision,
        }
    model, tokenizer, preprocess = embedder.model, embedder.tokenizer, embedder.preprocess
    context_length = text_context_length(model, tokenizer, cfg)
    return {
        "weights_id": model_id or model_fingerprint(model),
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "preprocess": preprocess_identity(preprocess),
        "tokenizer": tokenizer_identity(tokenizer, context_length),
        "context_length": context_length,
        "precision": cfg.precision,
    }


def check_tasks(evaluable: Any, tasks: List[TaskConfig]) -> None:
    """One-line ConfigError for a task that evaluates another kind of model than ``evaluable``."""
    for task in tasks:
        spec = TASKS[task.task]
        if spec.evaluates != evaluable.kind:
            raise ConfigError(
                f"eval task {task.name}: task={task.task} evaluates an {spec.evaluates}, but this model is an {evaluable.kind}"
            )


def run_task(evaluable: Any, task: TaskConfig, cfg: EvalConfig, model_id: Optional[str] = None) -> TaskResult:
    """Evaluate one configured task through its registered run function."""
    check_tasks(evaluable, [task])
    return TASKS[task.task].run_function()(evaluable, task, cfg, model_id)


def check_lost_share(result: TaskResult, task: TaskConfig, cfg: EvalConfig) -> None:
    """LabelError (one line: the task, lost of total, the reasons) when the samples the set skipped exceed
    ``cfg.max_lost_share`` of the samples it held (skipped + evaluated images); sets that evaluate no images (prompt
    sets of text-to-image tasks) are not checked."""
    evaluated = result.n.get("images") if isinstance(result.n, dict) else None
    skipped = (result.dataset or {}).get("skipped") or {}
    lost = sum(int(n) for n in skipped.values())
    if evaluated is None or not lost:
        return
    share = lost / (lost + int(evaluated))
    if share > cfg.max_lost_share:
        reasons = by_count(skipped)
        raise LabelError(
            f"eval task {task.name}: {lost} of {lost + int(evaluated)} samples lost ({share:.1%} > eval.max_lost_share="
            f"{cfg.max_lost_share:g}): {reasons}; nothing published"
        )


def evaluate_checkpoint(
    evaluable: Any,
    cfg: EvalConfig,
    checkpoint: str,
    model_id: Optional[str] = None,
    write: bool = True,
    on_exists: str = "raise",
) -> List[Dict[str, Any]]:
    """Run every task of ``cfg.tasks``; returns the records (written to ``cfg.records_dir`` when ``write``)."""
    check_tasks(evaluable, cfg.tasks)
    info = model_info(evaluable, cfg, model_id)
    records = []
    for task in cfg.tasks:
        log.info("evaluating %s on %s (%s)", checkpoint, task.name, task.task)
        try:
            result = run_task(evaluable, task, cfg, info["weights_id"])
        except BrokenModelError as exc:
            raise BrokenModelError(
                f"model {checkpoint} ({info['weights_id'][:12]}), eval task {task.name}: {exc}"
            ) from None
        check_lost_share(result, task, cfg)
        record = build_record(result, checkpoint, info, cfg)
        record["task_name"] = task.name
        if write:
            record["path"] = write_record(
                record, cfg.records_dir, result.per_query, stem=record_stem(checkpoint, task.name), on_exists=on_exists
            )
        records.append(record)
    return records
