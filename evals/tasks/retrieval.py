"""Zero-shot image-text retrieval with several captions per image (CLIP_benchmark's definition).

text->image R@k: a caption is a hit when its own image is among the k most similar images.
image->text R@k: an image is a hit when ANY of its captions is among the k most similar captions.
Both are means of per-query hit values (cosine similarity of L2-normalised embeddings, ranked in
memory-bounded blocks by ``topk``). Ties never help: a candidate scoring exactly the best positive's score (identical
images or captions in the set, or a constant tower) is broken by the expected value under random tie-breaking, and
the queries with such a tie are recorded as ``n["tied_t2i_queries"]`` / ``n["tied_i2t_queries"]``. R@k is undefined (None, with the reason) when k exceeds the number
of candidates. Long-caption retrieval (one long caption per image, Urban-1K style) is the same computation;
every retrieval result records the context length and how many captions it truncated.
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence, Tuple

import torch

from evals.results.bootstrap import QueryValues
from evals.results.task_result import TaskResult
from evals.tasks.config import EvalConfig
from evals.tasks.embeddings import encode_images, encode_texts, text_context_length
from evals.tasks.topk import retrieval_ranks
from harness_infra.errors import ConfigError
from harness_infra.identity import model_fingerprint

log = logging.getLogger(__name__)


def flatten_captions(captions_per_image: Sequence[Sequence[str]]) -> Tuple[List[str], torch.Tensor]:
    """(all captions in image order, index of each caption's image)."""
    texts = [c for captions in captions_per_image for c in captions]
    owner = [i for i, captions in enumerate(captions_per_image) for _ in captions]
    return texts, torch.tensor(owner, dtype=torch.int64)


def retrieval_result(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    cfg: EvalConfig,
    task: str = "retrieval",
    dataset: Optional[dict] = None,
) -> TaskResult:
    """R@k both ways (k in cfg.ks) with per-query hit vectors, from embeddings and each caption's image index."""
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    t2i, i2t = retrieval_ranks(image_emb, text_emb, text_to_image, cfg.score_block, cfg.device)
    if not bool(t2i.has_positive.any()) or not bool(i2t.has_positive.any()):
        raise ConfigError(
            f"retrieval on {(dataset or {}).get('name', 'the data set')}: no query has a positive ({n_texts} captions, {n_images} images)"
        )
    result = TaskResult(
        task,
        dict(dataset or {}),
        n={
            "images": n_images,
            "texts": n_texts,
            "image_queries": int(i2t.has_positive.sum()),
            "tied_t2i_queries": t2i.tied_queries,
            "tied_i2t_queries": i2t.tied_queries,
        },
    )
    for k in cfg.ks:
        for name, ranks, candidates, kind in (("t2i", t2i, n_images, "images"), ("i2t", i2t, n_texts, "captions")):
            metric = f"{name}_R@{k}"
            if k > candidates:
                result.set_undefined(metric, f"R@{k} is undefined with {candidates} candidate {kind} (< {k})")
            else:
                result.set_metric(metric, QueryValues(ranks.hit_probability(k)))
    return result


def evaluate_retrieval(
    model: torch.nn.Module,
    tokenizer: Any,
    preprocess: Any,
    data: Any,
    cfg: EvalConfig,
    model_id: Optional[str] = None,
    task: str = "retrieval",
) -> TaskResult:
    """Retrieval on a data set of (image, list of captions); ``task="long_retrieval"`` for one long caption per image."""
    if model_id is None and cfg.cache_dir is not None:
        model_id = model_fingerprint(model)  # hash the weights once for both cache keys
    image_emb, captions = encode_images(model, preprocess, data, cfg, model_id)
    texts, owner = flatten_captions(captions)
    if not texts:
        raise ConfigError(f"data set {getattr(data, 'name', '?')} has no captions")
    context_length = text_context_length(model, tokenizer, cfg)
    distinct = list(
        dict.fromkeys(texts)
    )  # identical captions encoded once: bitwise-equal rows, so their ties are exact
    unique_emb, unique_cut = encode_texts(model, tokenizer, distinct, cfg, model_id)
    row = torch.tensor([position for position in map({t: i for i, t in enumerate(distinct)}.__getitem__, texts)])
    text_emb, cut = unique_emb[row], unique_cut[row]
    result = retrieval_result(image_emb, text_emb, owner, cfg, task, data.describe())
    truncated = int(cut.sum())
    result.extra.update(
        {
            "context_length": context_length,
            "captions_truncated": truncated,
            "fraction_truncated": truncated / len(texts),
            "captions_per_image": len(texts) / max(image_emb.shape[0], 1),
        }
    )
    if task == "long_retrieval" and any(len(c) != 1 for c in captions):
        log.warning(
            "long-caption retrieval expects one caption per image; %s has %d captions for %d images",
            data.name,
            len(texts),
            len(captions),
        )
    if truncated:
        log.info(
            "%s: %d of %d captions exceed the context length %d and are truncated",
            data.name,
            truncated,
            len(texts),
            context_length,
        )
    result.add_intervals(cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    return result


def run_retrieval_task(embedder: Any, task: Any, cfg: EvalConfig, model_id: Optional[str] = None) -> TaskResult:
    """The registered ``retrieval`` and ``long_retrieval`` tasks on ``task.path`` read as the configured format."""
    from evals.tasks.datasets import open_eval_dataset

    return evaluate_retrieval(
        embedder.model, embedder.tokenizer, embedder.preprocess, open_eval_dataset(task), cfg, model_id, task=task.task
    )
