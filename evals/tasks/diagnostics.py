"""Caption diagnostics of a shard set, per caption source (original / recaption / references).

Per source: samples having it, caption count; word length (whitespace-separated words) and token length
(open_clip tokens including start/end, before truncation) as mean, median, p95 (linear interpolation) and
max; vocabulary size (distinct lower-cased ``\\w+`` words); fraction of captions longer than the context
length (truncated); and, given an evaluator model, the mean image-text cosine over every (image, caption)
pair of that source (texts at the evaluator's own context length), with per-pair values for a bootstrap
interval.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from captiondata.config import CaptionLayout, project_layout
from captiondata.records import Record
from evals.results.bootstrap import QueryValues
from evals.results.task_result import TaskResult
from evals.tasks.config import EvalConfig
from evals.tasks.embeddings import autocast, check_embeddings, encode_texts, eval_mode
from evals.tasks.imageprep import SplitPreprocess
from evals.tasks.textstats import token_counts

log = logging.getLogger(__name__)
SOURCES = ("original", "recaption", "references")
WORD = re.compile(r"\w+", re.UNICODE)


def record_captions(record: Record) -> Dict[str, List[str]]:
    """The captions of each source in one record."""
    return {
        "original": [record.original] if record.original else [],
        "recaption": list(record.recaptions),
        "references": list(record.references),
    }


def summary(lengths: Sequence[int]) -> Dict[str, Optional[float]]:
    """mean, median, p95 and max of a length list (None entries when empty)."""
    if len(lengths) == 0:
        return {"mean": None, "median": None, "p95": None, "max": None}
    array = np.asarray(lengths, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "p95": float(np.percentile(array, 95)),
        "max": float(array.max()),
    }


def text_statistics(texts: Sequence[str], tokenizer: Any, context_length: int) -> Dict[str, Any]:
    """Word and token length summaries, vocabulary size and truncated fraction of a caption list."""
    tokens = token_counts(tokenizer, texts) if texts else np.zeros(0, dtype=np.int64)
    vocabulary = set()
    for text in texts:
        vocabulary.update(w.lower() for w in WORD.findall(text))
    return {
        "n_captions": len(texts),
        "words": summary([len(t.split()) for t in texts]),
        "tokens": summary(tokens.tolist()),
        "vocabulary": len(vocabulary),
        "context_length": context_length,
        "fraction_truncated": float((tokens > context_length).mean()) if len(texts) else None,
    }


def _cosines(
    model: torch.nn.Module, preprocess: Any, tokenizer: Any, batch: List[Record], cfg: EvalConfig
) -> Dict[str, List[float]]:
    """Image-caption cosines of every (image, caption) pair of each source in a batch of records."""
    split = SplitPreprocess(preprocess)
    with eval_mode(model), torch.inference_mode(), autocast(cfg):
        pixels = split.tensor_stage([split.pil_stage(r.image) for r in batch]).to(cfg.device)
        images = check_embeddings(
            F.normalize(model.encode_image(pixels).float(), dim=-1).cpu(), "image embeddings", distinct_inputs=False
        )
    out: Dict[str, List[float]] = {}
    for source in SOURCES:
        pairs = [(i, c) for i, r in enumerate(batch) for c in record_captions(r)[source]]
        if pairs:
            texts, _ = encode_texts(model, tokenizer, [c for _, c in pairs], cfg)
            owner = torch.tensor([i for i, _ in pairs])
            out[source] = (images[owner] * texts).sum(dim=1).tolist()
    return out


def caption_diagnostics(
    records: Iterable[Record],
    tokenizer: Any,
    context_length: int,
    cfg: Optional[EvalConfig] = None,
    model: Optional[torch.nn.Module] = None,
    preprocess: Any = None,
) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, QueryValues]]:
    """(per-source statistics, per-source per-pair cosines) over records; cosines only when ``model`` is given.

    Records stream through in batches of ``cfg.batch_size``; only captions (not images) are kept.
    """
    cfg = dataclasses.replace(
        cfg or EvalConfig(), cache_dir=None, context_length=None
    )  # cosines at the evaluator's own context
    texts: Dict[str, List[str]] = {s: [] for s in SOURCES}
    having = {s: 0 for s in SOURCES}
    cosines: Dict[str, List[float]] = {s: [] for s in SOURCES}
    batch: List[Record] = []
    n_samples = 0

    def flush() -> None:
        if model is not None and batch:
            for source, values in _cosines(model, preprocess, tokenizer, batch, cfg).items():
                cosines[source].extend(values)
        batch.clear()

    for record in records:
        n_samples += 1
        for source, captions in record_captions(record).items():
            texts[source].extend(captions)
            having[source] += bool(captions)
        batch.append(record)
        if len(batch) >= cfg.batch_size:
            flush()
    flush()
    stats: Dict[str, Dict[str, Any]] = {}
    per_pair: Dict[str, QueryValues] = {}
    for source in SOURCES:
        stats[source] = {
            "samples": n_samples,
            "samples_with_source": having[source],
            **text_statistics(texts[source], tokenizer, context_length),
        }
        stats[source]["mean_cosine"] = float(np.mean(cosines[source])) if cosines[source] else None
        if cosines[source]:
            per_pair[source] = QueryValues(np.asarray(cosines[source]))
    return stats, per_pair


def shard_diagnostics(
    shards: Any,
    tokenizer: Any,
    context_length: int,
    cfg: Optional[EvalConfig] = None,
    model: Optional[torch.nn.Module] = None,
    preprocess: Any = None,
    layout: Optional[CaptionLayout] = None,
    max_samples: Optional[int] = None,
) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, QueryValues]]:
    """``caption_diagnostics`` over a shard spec read with the project's reader (first ``max_samples`` samples)."""
    from itertools import islice

    from captiondata.reader import iter_samples

    records = iter_samples(shards, layout or project_layout())
    return caption_diagnostics(islice(records, max_samples), tokenizer, context_length, cfg, model, preprocess)


def run_diagnostics_task(embedder: Any, task: Any, cfg: EvalConfig, model_id: Optional[str] = None) -> "TaskResult":
    """The registered ``caption_diagnostics`` task on project shards (metric: mean image-text cosine per caption
    source: original, recaption, references)."""
    from evals.results.task_result import TaskResult
    from evals.tasks.datasets import project_shards
    from evals.tasks.embeddings import text_context_length

    data = project_shards(task.resolved_path(), task.name, task.max_samples)
    context_length = text_context_length(embedder.model, embedder.tokenizer, cfg)
    stats, per_pair = shard_diagnostics(
        data.shards,
        embedder.tokenizer,
        context_length,
        cfg,
        embedder.model,
        embedder.preprocess,
        max_samples=task.max_samples,
    )
    result = TaskResult(
        "caption_diagnostics",
        data.describe(),
        n={s: v["n_captions"] for s, v in stats.items()},
        extra={"sources": stats},
    )
    for source, values in per_pair.items():
        result.set_metric(f"{source}_mean_cosine", values)
    result.add_intervals(cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    return result
