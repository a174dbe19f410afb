"""Encode images and texts into L2-normalised float32 embeddings, batched, with an on-disk cache.

Images: decode + PIL transforms per image (loader workers), ToTensor + Normalize once per batch
(``imageprep``), ``model.encode_image``. Texts: tokenised in chunks, sorted by token length, and - for
open_clip ``CLIP`` text towers with a causal mask and EOT pooling - encoded with the all-padding token
columns dropped. With a causal mask no position attends to a later one, and the pooled EOT token lies
before the padding, so dropping trailing padding changes nothing but the work done (checked against
``model.encode_text`` on the first batch; trimming is switched off with a warning if they disagree).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from evals.tasks.config import EvalConfig
from evals.tasks.imageprep import SplitPreprocess, image_loader
from evals.tasks.textstats import tokenize_with_truncation
from harness_infra.cache import EmbeddingCache
from harness_infra.errors import BrokenModelError, ConfigError
from harness_infra.identity import model_fingerprint, preprocess_identity, texts_fingerprint, tokenizer_identity
from harness_infra.progress import Progress
from towers.pretrained import trunk_of
from towers.text_trim import can_trim_text, encode_text_trimmed, token_lengths

log = logging.getLogger(__name__)
TEXT_CHUNK_BATCHES = 16  # texts tokenised (and length-sorted) per chunk = 16 x batch_size


def autocast(cfg: EvalConfig) -> contextlib.AbstractContextManager:
    """No-op for fp32, else torch.autocast on the configured device with bf16/fp16."""
    if cfg.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(
        device_type=torch.device(cfg.device).type, dtype=torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    )


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Put the model in eval mode for the block and restore its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def text_context_length(model: torch.nn.Module, tokenizer: Any, cfg: EvalConfig) -> int:
    """The model's own context length (else the tokenizer's), or the config override (<= the model's)."""
    own = getattr(model, "context_length", None) or getattr(tokenizer, "context_length", None) or 77
    if cfg.context_length is None:
        return int(own)
    if cfg.context_length > own:
        raise ConfigError(f"eval.context_length={cfg.context_length} exceeds the model's context length {own}")
    return int(cfg.context_length)


def check_embeddings(
    embeddings: torch.Tensor, what: str, distinct_inputs: bool = True, atol: float = 1e-6
) -> torch.Tensor:
    """``embeddings`` (N x D) unchanged, or BrokenModelError when any value is NaN/inf, or when N >= 2 distinct inputs
    all got the same embedding (within ``atol`` per entry: a collapsed or constant tower, whose every score ties).

    ``what`` names the embeddings (e.g. ``image embeddings of cifar10``) for the one-line message.
    """
    finite = torch.isfinite(embeddings)
    if not bool(finite.all()):
        bad = int((~finite).any(dim=1).sum())
        raise BrokenModelError(f"{bad} of {embeddings.shape[0]} {what} contain NaN or infinite values")
    if distinct_inputs and embeddings.shape[0] >= 2 and float((embeddings - embeddings[0]).abs().max()) <= atol:
        raise BrokenModelError(f"all {embeddings.shape[0]} {what} are identical (a constant or collapsed model)")
    return embeddings


def _image_cache_key(model_id: str, data: Any, preprocess: Any, cfg: EvalConfig) -> Dict[str, Any]:
    """What image embeddings depend on."""
    return {
        "model": model_id,
        "data": data.fingerprint,
        "preprocess": preprocess_identity(preprocess),
        "precision": cfg.precision,
    }


def stored_targets(targets: List[Any]) -> Any:
    """Targets as a cache file holds them: class indices as one tensor, anything else as given."""
    return torch.tensor(targets) if targets and isinstance(targets[0], int) else targets


def loaded_targets(hit: Dict[str, Any], data: Any = None) -> List[Any]:
    """The targets list of a cache payload (inverse of ``stored_targets``); a set that counts its skipped inputs
    (``evals.tasks.datasets``) gets the counts stored with the payload back, so a cache hit records them too."""
    restore = getattr(data, "restore_counts", None)
    if callable(restore) and hit.get("input_counts"):
        restore(hit["input_counts"])
    targets = hit["targets"]
    return targets.tolist() if isinstance(targets, torch.Tensor) else targets


def input_counts(data: Any) -> Dict[str, Any]:
    """A data set's skip and conversion counts for a cache payload ({} for sets that do not count)."""
    counts = getattr(data, "counts", None)
    return counts() if callable(counts) else {}


def encode_images(
    model: torch.nn.Module, preprocess: Any, data: Dataset, cfg: EvalConfig, model_id: Optional[str] = None
) -> Tuple[torch.Tensor, List[Any]]:
    """(N x D normalised float32 CPU embeddings, the N targets in the same order) for an image data set.

    Raises BrokenModelError for NaN/inf embeddings, or one embedding for every image (``check_embeddings``).

    Cached per (model weights, data set fingerprint, preprocessing, precision) when ``cfg.cache_dir`` is set; with
    ``cfg.trunk_feature_cache`` a timm tower's trunk features are cached per trunk weights as well (then embedding =
    normalise(visual.head(trunk features)), the tower's own forward).
    """
    cache = EmbeddingCache(cfg.cache_dir)
    key = None
    if cfg.cache_dir is not None:
        key = _image_cache_key(model_id or model_fingerprint(model), data, preprocess, cfg)
        hit = cache.load("image", key)
        if hit is not None:
            return check_embeddings(
                hit["embeddings"], f"image embeddings of {getattr(data, 'name', 'the data set')}"
            ), loaded_targets(hit, data)
    trunk = trunk_of(model) if cfg.trunk_feature_cache and cfg.cache_dir is not None else None
    if trunk is not None:
        features, targets = trunk_features(trunk, preprocess, data, cfg)
        with eval_mode(model), torch.inference_mode(), autocast(cfg):
            head = model.visual.head
            embeddings = torch.cat(
                [F.normalize(head(c.to(cfg.device)).float(), dim=-1).cpu() for c in features.split(cfg.batch_size)]
            )
    else:
        embeddings, targets = _run_images(model.encode_image, model, preprocess, data, cfg, normalize=True)
    check_embeddings(embeddings, f"image embeddings of {getattr(data, 'name', 'the data set')}")
    if key is not None:
        cache.save(
            "image",
            key,
            {"embeddings": embeddings, "targets": stored_targets(targets), "input_counts": input_counts(data)},
        )
    return embeddings, targets


def _run_images(
    forward: Any, model: torch.nn.Module, preprocess: Any, data: Dataset, cfg: EvalConfig, normalize: bool
) -> Tuple[torch.Tensor, List[Any]]:
    """(``forward(pixels)`` of every image as float32 CPU rows, L2-normalised when ``normalize``, targets);
    ``model`` (the module ``forward`` belongs to) is in eval mode meanwhile."""
    split = SplitPreprocess(preprocess)
    chunks: List[torch.Tensor] = []
    targets: List[Any] = []
    device = torch.device(cfg.device)
    total = len(data) if hasattr(data, "__len__") else None
    with (
        eval_mode(model),
        torch.inference_mode(),
        autocast(cfg),
        Progress(f"image embeddings of {getattr(data, 'name', 'the data set')}", total=total, unit="image") as progress,
    ):
        for arrays, batch_targets in image_loader(data, split, cfg.batch_size, cfg.num_workers):
            pixels = split.tensor_stage(arrays).to(device, non_blocking=True)
            out = forward(pixels).float()
            chunks.append((F.normalize(out, dim=-1) if normalize else out).cpu())
            targets.extend(batch_targets)
            progress.update(len(batch_targets))
    if not chunks:
        raise ConfigError(f"data set {getattr(data, 'name', '?')} yielded no images")
    return torch.cat(chunks), targets


def trunk_features(
    trunk: torch.nn.Module, preprocess: Any, data: Dataset, cfg: EvalConfig
) -> Tuple[torch.Tensor, List[Any]]:
    """(N x F pooled trunk features, targets) of a data set, cached per (trunk weights, data, preprocessing, precision)."""
    cache = EmbeddingCache(cfg.cache_dir)
    key = {
        "trunk": model_fingerprint(trunk),
        "trunk_class": type(trunk).__name__,
        "data": data.fingerprint,
        "preprocess": preprocess_identity(preprocess),
        "precision": cfg.precision,
    }
    hit = cache.load("trunk", key)
    if hit is not None:
        return hit["features"], loaded_targets(hit, data)
    features, targets = _run_images(trunk, trunk, preprocess, data, cfg, normalize=False)
    cache.save(
        "trunk", key, {"features": features, "targets": stored_targets(targets), "input_counts": input_counts(data)}
    )
    return features, targets


def encode_texts(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], cfg: EvalConfig, model_id: Optional[str] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N x D normalised float32 CPU embeddings, bool mask of texts truncated at the context length).

    Raises BrokenModelError for NaN/inf embeddings, or identical embeddings of distinct texts (``check_embeddings``).

    Texts are tokenised at the model's (or overridden) context length. Cached per (model weights, tokenizer,
    context length, exact texts, precision) when ``cfg.cache_dir`` is set.
    """
    context_length = text_context_length(model, tokenizer, cfg)
    cache = EmbeddingCache(cfg.cache_dir)
    key = None
    if cfg.cache_dir is not None:
        key = {
            "model": model_id or model_fingerprint(model),
            "tokenizer": tokenizer_identity(tokenizer, context_length),
            "texts": texts_fingerprint(texts),
            "precision": cfg.precision,
        }
        hit = cache.load("text", key)
        if hit is not None:
            return check_embeddings(hit["embeddings"], "text embeddings", len(set(texts)) > 1), hit["truncated"]
    embeddings, truncated = _encode_text_batches(model, tokenizer, list(texts), context_length, cfg)
    check_embeddings(embeddings, "text embeddings", distinct_inputs=len(set(texts)) > 1)
    if key is not None:
        cache.save("text", key, {"embeddings": embeddings, "truncated": truncated})
    return embeddings, truncated


def _encode_text_batches(
    model: torch.nn.Module, tokenizer: Any, texts: List[str], context_length: int, cfg: EvalConfig
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tokenise chunk by chunk, encode length-sorted batches, write rows back in input order."""
    if not texts:
        raise ConfigError("no texts to encode")
    device = torch.device(cfg.device)
    trim = cfg.trim_text_padding and can_trim_text(model)
    checked = not trim
    out: Optional[torch.Tensor] = None
    truncated = torch.zeros(len(texts), dtype=torch.bool)
    chunk = cfg.batch_size * TEXT_CHUNK_BATCHES
    with (
        eval_mode(model),
        torch.inference_mode(),
        autocast(cfg),
        Progress("text embeddings", total=len(texts), unit="text") as progress,
    ):
        for start in range(0, len(texts), chunk):
            tokens, cut = tokenize_with_truncation(tokenizer, texts[start : start + chunk], context_length)
            truncated[start : start + len(cut)] = cut
            order = torch.argsort(token_lengths(tokens), descending=True, stable=True)
            for batch_index in order.split(cfg.batch_size):
                batch = tokens[batch_index].to(device)
                if trim and not checked:
                    trim = _trimming_agrees(model, batch[-4:])
                    checked = True
                features = encode_text_trimmed(model, batch) if trim else model.encode_text(batch)
                features = F.normalize(features.float(), dim=-1).cpu()
                if out is None:
                    out = torch.empty(len(texts), features.shape[1], dtype=torch.float32)
                out[start + batch_index] = features
            progress.update(len(cut))
    return out, truncated


def _trimming_agrees(model: torch.nn.Module, tokens: torch.Tensor) -> bool:
    """True when the trimmed forward matches ``model.encode_text`` on a few rows (tolerance 1e-4 x scale), compared
    with autocast off: under bf16 autocast the two differ by bf16 rounding (about 1e-2), which would switch trimming
    off for a model it is exact for."""
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        full = model.encode_text(tokens).float()
        trimmed = encode_text_trimmed(model, tokens).float()
    tolerance = 1e-4 * max(float(full.abs().max()), 1.0)
    if float((full - trimmed).abs().max()) > tolerance:
        log.warning("trimmed text encoding disagrees with model.encode_text; encoding at full context length")
        return False
    return True
