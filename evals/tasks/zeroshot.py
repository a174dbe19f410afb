"""Zero-shot classification: prompt-ensemble class weights, top-1 / top-5 accuracy, mean per-class recall.

Definitions: for each class, encode every template filled with the class name, L2-normalise each prompt
embedding, average, re-normalise -> class weight w_c. logits = 100 * image_embedding @ W^T. top-k hit: the
true class is among the k highest logits. Ties never help: a class whose logit equals the true class's counts by the
expected value under random tie-breaking (``topk``), so each image contributes P(hit) in [0, 1]; the number of
images whose true class ties with another (identical class names such as ImageNet's two "crane" classes, or a
constant tower) is recorded as ``n["tied_queries"]``, and duplicate class names are warned about and recorded.
top-1 / top-5: mean hit over images; top-5 is undefined (None, with the reason) below 5 classes. Mean per-class
recall: the mean over the classes present in the labels of the per-class top-1 hit rate (sklearn's balanced
accuracy).
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from evals.results.bootstrap import QueryValues
from evals.results.task_result import TaskResult
from evals.tasks.config import EvalConfig
from evals.tasks.embeddings import encode_images, encode_texts
from evals.tasks.prompts import Template, duplicate_names, render
from evals.tasks.topk import classification_ranks
from harness_infra.errors import ConfigError
from harness_infra.identity import model_fingerprint

log = logging.getLogger(__name__)


def build_classifier(
    model: torch.nn.Module,
    tokenizer: Any,
    classnames: Sequence[str],
    templates: Sequence[Template],
    cfg: EvalConfig,
    model_id: Optional[str] = None,
) -> torch.Tensor:
    """C x D class weights: per class, mean of the L2-normalised template embeddings, re-normalised.

    The distinct prompts among the C x T are encoded in batches of ``cfg.batch_size`` (not one forward pass per class).
    """
    if not classnames or not templates:
        raise ConfigError("zero-shot classification needs at least one class name and one template")
    prompts = [render(t, c) for c in classnames for t in templates]
    distinct = list(
        dict.fromkeys(prompts)
    )  # each distinct prompt encoded once: identical class names get identical weights
    unique_emb, _ = encode_texts(model, tokenizer, distinct, cfg, model_id)  # already L2-normalised per prompt
    position = {prompt: row for row, prompt in enumerate(distinct)}
    embeddings = unique_emb[torch.tensor([position[p] for p in prompts])]
    weights = embeddings.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(weights, dim=-1)


def classification_result(
    image_emb: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    cfg: EvalConfig,
    dataset: Optional[dict] = None,
) -> TaskResult:
    """Metrics (with per-query hit vectors) from image embeddings, integer labels and C x D class weights."""
    n_classes = weights.shape[0]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ConfigError(
            f"labels range over [{int(labels.min())}, {int(labels.max())}] but there are {n_classes} class names"
        )
    result = TaskResult(
        "zeroshot_classification", dict(dataset or {}), n={"images": int(labels.numel()), "classes": n_classes}
    )
    ranks = classification_ranks(image_emb, weights, labels, cfg.score_block, cfg.device)
    label_array = labels.numpy()
    for k in (1, 5):
        if n_classes < k:
            result.set_undefined(f"top{k}", f"top-{k} accuracy is undefined with {n_classes} classes (< {k})")
        else:
            result.set_metric(f"top{k}", QueryValues(ranks.hit_probability(k)))
    result.set_metric("mean_per_class_recall", QueryValues(ranks.hit_probability(1), groups=label_array))
    result.n["classes_present"] = int(np.unique(label_array).size)
    result.n["tied_queries"] = ranks.tied_queries
    return result


def evaluate_zeroshot_classification(
    model: torch.nn.Module,
    tokenizer: Any,
    preprocess: Any,
    data: Any,
    cfg: EvalConfig,
    model_id: Optional[str] = None,
    classnames: Optional[List[str]] = None,
    templates: Optional[List[Template]] = None,
) -> TaskResult:
    """Zero-shot classification of a data set of (image, class index); class names / templates default to the set's own."""
    classnames = classnames if classnames is not None else data.classes
    templates = templates if templates is not None else data.templates
    if not classnames or not templates:
        raise ConfigError(
            f"data set {getattr(data, 'name', '?')} needs class names and templates for zero-shot classification"
        )
    from evals.tasks.datasets import check_labels  # labels within the class names, before any image is encoded

    check_labels(data, len(classnames))
    if model_id is None and cfg.cache_dir is not None:
        model_id = model_fingerprint(model)  # hash the weights once for both cache keys
    duplicates = sorted(
        duplicate_names(classnames)
    )  # warned about when the class names were read (prompts.check_classnames)
    weights = build_classifier(model, tokenizer, classnames, templates, cfg, model_id)
    image_emb, targets = encode_images(model, preprocess, data, cfg, model_id)
    result = classification_result(
        image_emb, torch.as_tensor(targets, dtype=torch.int64), weights, cfg, data.describe()
    )
    result.extra.update({"n_templates": len(templates), "duplicate_classnames": duplicates})
    result.add_intervals(cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    return result


def run_zeroshot_task(embedder: Any, task: Any, cfg: EvalConfig, model_id: Optional[str] = None) -> TaskResult:
    """The registered ``zeroshot_classification`` task: ``task.path`` read as the configured format, classes and
    templates from the task (else the data set's own)."""
    from evals.tasks.datasets import open_eval_dataset

    return evaluate_zeroshot_classification(
        embedder.model, embedder.tokenizer, embedder.preprocess, open_eval_dataset(task), cfg, model_id
    )
