"""Frozen-feature training for a locked image trunk (LiT): compute the trunk's pooled features once, train the rest.

When the image trunk of an open_clip ``TimmModel`` tower (``model.visual.trunk``) is locked - no trainable
parameter, BatchNorm statistics fixed, no active dropout - and its input preprocessing is deterministic (the
model's eval transform: resize, centre crop, normalise), its output for an image never changes during training.
``train_split_features`` computes it once per (trunk weights, preprocessing, shard files) and stores it in an
``EmbeddingCache`` file; ``FeatureInputCLIP`` then trains the projection head, the text tower and the logit scale
on those features. A step costs only the trainable part: for FID Inception at 299 px on 2 CPU cores the trunk
alone is about 10 images/s, the text tower's forward+backward 25-100 samples/s.

The cache key holds the sha256 of every trunk tensor, the transform's repr (every step and parameter), and each
shard's name, size and modification time, so new weights, another image size or rewritten shards are a miss.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from captiondata.config import ConfigError, DataConfig
from captiondata.counters import SampleCounters
from captiondata.loader import ImageFeatures
from captiondata.reader import expand_shards, raw_samples, valid_records
from evals.embeddings import trunk_of

log = logging.getLogger(__name__)
FEATURE_CACHE_KIND = "trunk-shards"
FEATURE_FORMAT = 1


def unfrozen_reason(model: nn.Module) -> Optional[str]:
    """Why the image trunk's output could change in training (None when it is frozen and deterministic).

    Frozen: every trunk parameter has ``requires_grad=False``; no BatchNorm updates statistics in train mode (open_clip's
    lock with ``tower.image_freeze_bn_stats`` keeps them in eval mode); no dropout or drop-path with p > 0.
    """
    trunk = trunk_of(model)
    if trunk is None:
        return f"the image tower is a {type(getattr(model, 'visual', None)).__name__}, not an open_clip timm tower (visual.trunk + visual.head)"
    trainable = [name for name, param in trunk.named_parameters() if param.requires_grad]
    if trainable:
        return f"{len(trainable)} trunk tensors are trainable (first: {trainable[0]}); lock the image tower with no unlocked groups or norms"
    was_training = trunk.training
    trunk.train()
    try:
        for name, module in trunk.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training and module.track_running_stats:
                return f"BatchNorm {name} would update its statistics; set tower.image_freeze_bn_stats=true"
            rate = module.p if isinstance(module, nn.modules.dropout._DropoutNd) else getattr(module, "drop_prob", 0.0)
            if module.training and float(rate or 0.0) > 0:
                return f"{name} ({type(module).__name__}) drops activations at random in training"
    finally:
        trunk.train(was_training)
    return None


def shard_identity(urls: List[str]) -> List[Any]:
    """(basename, size, mtime_ns) of each local shard, the URL of a remote one: changes whenever a shard is rewritten."""
    entries: List[Any] = []
    for url in urls:
        local = url[len("file://"):] if url.startswith("file://") else url
        if "://" in local or local.startswith("pipe:") or not os.path.isfile(local):
            entries.append([url])
        else:
            stat = os.stat(local)
            entries.append([os.path.basename(local), stat.st_size, stat.st_mtime_ns])
    return entries


def feature_cache_key(trunk: nn.Module, transform: Callable, urls: List[str], data_cfg: DataConfig) -> Dict[str, Any]:
    """What the trunk features of a shard list depend on: weights, preprocessing, shard files, layout, size guard."""
    from evals.identity import model_fingerprint, preprocess_identity

    return {"format": FEATURE_FORMAT, "trunk": model_fingerprint(trunk), "trunk_class": type(trunk).__name__,
            "preprocess": preprocess_identity(transform), "shards": shard_identity(urls),
            "layout": asdict(data_cfg.layout), "max_image_pixels": data_cfg.max_image_pixels, "dtype": "float32"}


@torch.inference_mode()
def compute_trunk_features(trunk: nn.Module, urls: List[str], data_cfg: DataConfig, transform: Callable,
                           batch_size: int, device: torch.device) -> Dict[str, Any]:
    """Trunk features of every valid sample of ``urls`` in file order: {keys, features [N, D] float32 CPU, skipped}.

    Bad samples (corrupt image, missing caption, duplicate key, truncated shard, ...) are skipped and counted with
    the loader's reasons, so they are exactly the samples the caption loader would skip.
    """
    counters = SampleCounters(max_workers=1)
    was_training = trunk.training
    trunk.eval()
    keys: List[str] = []
    chunks: List[torch.Tensor] = []
    pending: List[torch.Tensor] = []

    def flush() -> None:
        """Run the trunk on the pending images."""
        if pending:
            chunks.append(trunk(torch.stack(pending).to(device)).float().cpu())
            pending.clear()

    try:
        for record in valid_records(raw_samples(urls, counters), data_cfg.layout, counters, data_cfg.max_image_pixels):
            keys.append(record.key)
            pending.append(transform(record.image))
            if len(pending) == batch_size:
                flush()
                if len(keys) % (batch_size * 16) == 0:
                    log.info("trunk features: %d images", len(keys))
        flush()
    finally:
        trunk.train(was_training)
    counters.flush()
    skipped = {name: count for name, count in counters.totals().items() if count and name != "samples"}
    if not keys:
        raise ConfigError(f"no valid training sample in {len(urls)} shard(s) to compute image features from (skipped: {skipped or 'none'})")
    return {"keys": keys, "features": torch.cat(chunks), "skipped": skipped}


def train_split_features(model: nn.Module, data_cfg: DataConfig, transform: Callable, cache_dir: Optional[str],
                         batch_size: int, device: torch.device, compute: bool = True) -> ImageFeatures:
    """The locked trunk's features of the training split: loaded from ``cache_dir`` or computed (and stored there).

    ``compute=False`` (non-zero ranks after rank 0 wrote the cache) loads only, and fails when the file is missing.
    """
    from evals.cache import EmbeddingCache

    reason = unfrozen_reason(model)
    if reason is not None:
        raise ConfigError(f"train.frozen_image_features=true needs a frozen, deterministic image trunk: {reason}")
    trunk = trunk_of(model)
    urls = expand_shards(data_cfg.shards("train"))
    cache = EmbeddingCache(cache_dir)
    key = feature_cache_key(trunk, transform, urls, data_cfg)
    payload = cache.load(FEATURE_CACHE_KIND, key)
    if payload is None:
        if not compute:
            raise ConfigError(f"image-feature cache entry {cache.path(FEATURE_CACHE_KIND, key)} is missing; rank 0 should have written it")
        log.info("trunk features: computing for %d shard(s) (cache %s)", len(urls), cache.path(FEATURE_CACHE_KIND, key) or "off")
        payload = compute_trunk_features(trunk, urls, data_cfg, transform, batch_size, device)
        cache.save(FEATURE_CACHE_KIND, key, payload)
    features = ImageFeatures(list(payload["keys"]), payload["features"])
    log.info("trunk features: %d images x %d dims%s", len(features.keys), features.features.shape[1],
             f", skipped {payload['skipped']}" if payload["skipped"] else "")
    return features


class FeatureInputCLIP(nn.Module):
    """An open_clip CLIP with a timm image tower that takes the trunk's pooled features instead of pixels.

    ``forward(trunk_features, text)`` = the model's own outputs with ``visual.trunk`` skipped: image features =
    normalise(visual.head(trunk_features)), text features = normalise(encode_text(text)), logit_scale.exp()
    (and logit_bias when the model has one). The parameters are the wrapped model's, so checkpoints and exports
    of ``clip`` are unchanged.
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    @property
    def logit_scale(self) -> nn.Parameter:
        """The wrapped model's logit scale (clamped by the optimizer step)."""
        return self.clip.logit_scale

    def forward(self, trunk_features: torch.Tensor, text: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Contrastive outputs of a batch of (trunk features, tokens)."""
        out = {"image_features": F.normalize(self.clip.visual.head(trunk_features), dim=-1),
               "text_features": self.clip.encode_text(text, normalize=True),
               "logit_scale": self.clip.logit_scale.exp()}
        if getattr(self.clip, "logit_bias", None) is not None:
            out["logit_bias"] = self.clip.logit_bias
        return out
