"""Frozen-feature training for a locked image trunk (LiT): compute the trunk's pooled features once, train the rest.

When the image trunk of an open_clip ``TimmModel`` tower (``model.visual.trunk``) is locked - no trainable
parameter, BatchNorm statistics fixed, no active dropout - and its input preprocessing is deterministic (the
model's eval transform: resize, centre crop, normalise), its output for an image never changes during training.
``train_split_features`` computes it once and stores it in ``EmbeddingCache`` entries; ``FeatureInputCLIP`` then
trains the projection head, the text tower and the logit scale on those features. A step costs only the trainable
part: on 2 CPU cores FID Inception at 299 px alone runs at 7-8 images/s, while a LiT step from cached features
trains 15-19 samples/s on merged Flickr8k captions (up to 102 tokens) and about 76 on the short originals.

There is one cache entry per shard, keyed by the sha256 of every trunk tensor, the transform's repr (every step and
parameter) and the shard's name, size and modification time: new weights or another image size miss everywhere, a
rewritten or added shard misses alone, and under DDP every rank computes its own share of the shards.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from captiondata.config import DataConfig
from captiondata.counters import SampleCounters
from captiondata.loader import ImageFeatures
from captiondata.reader import expand_shards, raw_samples, valid_records
from harness_infra.errors import ConfigError
from harness_infra.identity import file_identity, model_fingerprint, preprocess_identity
from towers.pretrained import trunk_of
from towers.text_trim import encode_text_trimmed

log = logging.getLogger(__name__)
FEATURE_CACHE_KIND = "trunk-shards"
FEATURE_FORMAT = 1


def shard_identity(url: str) -> List[Any]:
    """A shard's part of its cache key: (basename, size, mtime_ns) locally, so a rewritten shard is a miss."""
    return file_identity(url, mtime=True)


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


def feature_cache_key(trunk: nn.Module, transform: Callable, data_cfg: DataConfig) -> Dict[str, Any]:
    """What trunk features depend on besides the shard: weights, preprocessing, layout, image size guard.

    Each shard's entry adds ``"shard": shard_identity(url)`` (name, size, mtime) to this key.
    """
    return {
        "format": FEATURE_FORMAT,
        "trunk": model_fingerprint(trunk),
        "trunk_class": type(trunk).__name__,
        "preprocess": preprocess_identity(transform),
        "layout": asdict(data_cfg.layout),
        "max_image_pixels": data_cfg.max_image_pixels,
        "exif_transpose": data_cfg.exif_transpose,
        "dtype": "float32",
    }


@torch.inference_mode()
def compute_trunk_features(
    trunk: nn.Module, urls: List[str], data_cfg: DataConfig, transform: Callable, batch_size: int, device: torch.device
) -> Dict[str, Any]:
    """Trunk features of every valid sample of ``urls`` in file order: {keys, features [N, D] float32 CPU, skipped}.

    Bad samples (corrupt image, missing caption, duplicate key, truncated shard, ...) are skipped and counted with
    the loader's reasons, so they are exactly the samples the caption loader would skip. N may be 0.
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
        for record in valid_records(
            raw_samples(urls, counters, data_cfg.max_member_bytes),
            data_cfg.layout,
            counters,
            data_cfg.max_image_pixels,
            data_cfg.exif_transpose,
        ):
            keys.append(record.key)
            pending.append(transform(record.image))
            if len(pending) == batch_size:
                flush()
        flush()
    finally:
        trunk.train(was_training)
    counters.flush()
    skipped = {name: count for name, count in counters.totals().items() if count and name != "samples"}
    features = torch.cat(chunks) if chunks else torch.zeros(0, 0)
    return {"keys": keys, "features": features, "skipped": skipped}


def merge_shard_features(parts: List[Dict[str, Any]], urls: List[str]) -> Dict[str, Any]:
    """Concatenate per-shard payloads (``parts[i]`` of shard ``urls[i]``) in shard order: {keys, shards, features, skipped}.

    A sample is (shard, key): the same key in two shards is two samples, each with its own row (the reader already
    drops a key repeated inside one shard, counted as ``duplicate_key``, the same way in this pass and in the loader).
    """
    keys: List[str] = []
    shards: List[str] = []
    rows: List[torch.Tensor] = []
    skipped: Dict[str, int] = {}
    for part, url in zip(parts, urls, strict=True):
        for name, count in part["skipped"].items():
            skipped[name] = skipped.get(name, 0) + count
        keys.extend(part["keys"])
        shards.extend([url] * len(part["keys"]))
        if part["keys"]:
            rows.append(part["features"])
    return {
        "keys": keys,
        "shards": shards,
        "features": torch.cat(rows) if rows else torch.zeros(0, 0),
        "skipped": skipped,
    }


def train_split_features(
    model: nn.Module,
    data_cfg: DataConfig,
    transform: Callable,
    cache_dir: Optional[str],
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
) -> Any:
    """The locked trunk's features of the training split, one cache entry per shard in ``cache_dir``.

    With a cache, rank r computes the missing entries of shards r, r + world_size, ...; after ``barrier()`` every
    rank checks that every entry exists and gets a ``CachedShardFeatures`` that loads each entry when its shard is
    read (memory bounded by the shards in flight). Without one (``cache_dir=None``) every rank computes everything
    and holds it in memory (``ImageFeatures``).
    """
    from harness_infra.cache import EmbeddingCache

    reason = unfrozen_reason(model)
    if reason is not None:
        raise ConfigError(f"train.frozen_image_features=true needs a frozen, deterministic image trunk: {reason}")
    trunk = trunk_of(model)
    urls = expand_shards(data_cfg.shards("train"))
    if cache_dir is None:
        merged = merge_shard_features(
            [compute_trunk_features(trunk, [url], data_cfg, transform, batch_size, device) for url in urls], urls
        )
        return checked_features(merged, len(urls))
    cache, base = EmbeddingCache(cache_dir), feature_cache_key(trunk, transform, data_cfg)
    mine = urls[rank::world_size]
    computed = 0
    for number, url in enumerate(mine, 1):
        key = {**base, "shard": shard_identity(url)}
        if cache.load(FEATURE_CACHE_KIND, key, quiet=True) is None:
            cache.save(
                FEATURE_CACHE_KIND, key, compute_trunk_features(trunk, [url], data_cfg, transform, batch_size, device)
            )
            computed += 1
            log.info(
                "trunk features: shard %d/%d of rank %d computed (%s)", number, len(mine), rank, os.path.basename(url)
            )
    log.info(
        "trunk features: rank %d computed %d and found %d of its %d shard(s) in %s",
        rank,
        computed,
        len(mine) - computed,
        len(mine),
        cache_dir,
    )
    barrier()
    shard_keys = {url: shard_identity(url) for url in urls}
    missing = [
        url
        for url, ident in shard_keys.items()
        if not os.path.isfile(cache.path(FEATURE_CACHE_KIND, {**base, "shard": ident}))
    ]
    if missing:
        raise ConfigError(
            f"image features of shard {missing[0]} are missing from {cache_dir} after every rank computed its share"
        )
    log.info(
        "trunk features: %d shard entries in %s, each loaded when the loader opens its shard", len(urls), cache_dir
    )
    return CachedShardFeatures(cache_dir, base, shard_keys)


@dataclass
class CachedShardFeatures:
    """The locked trunk's features of the training split, read from the cache one shard at a time.

    ``get(key, shard)`` loads the entry of ``shard`` when the loader reaches it (the loader looks features up in shard
    order, before its shuffle buffer) and drops the previous one, so a loader process holds one shard's features plus
    the rows waiting in its shuffle buffer, not the split: about 8 KB per image at 2048 float32 dims, i.e. 8 GB per
    million images per rank when held whole. ``shard_keys``: shard URL -> its ``shard_identity`` (the entry key's
    ``shard`` part). A vanished or rewritten entry is a one-line ConfigError, never a silent miss.
    """

    cache_dir: str
    base_key: Dict[str, Any]
    shard_keys: Dict[str, Any]
    _shard: Optional[str] = field(default=None, init=False, repr=False)
    _index: Dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _rows: Optional[torch.Tensor] = field(default=None, init=False, repr=False)

    def __getstate__(self) -> Dict[str, Any]:
        """Loader workers get the shard map, not a loaded entry."""
        return {"cache_dir": self.cache_dir, "base_key": self.base_key, "shard_keys": self.shard_keys}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state)

    def get(self, key: str, shard: Optional[str] = None) -> Optional[torch.Tensor]:
        """The feature row of sample ``key`` of ``shard`` (loading that shard's entry if another one is open), or None."""
        if shard != self._shard:
            self._open(shard)
        row = self._index.get(key)
        return None if row is None else self._rows[row]

    def rows(self) -> Iterator[Tuple[str, str, torch.Tensor]]:
        """Every (shard, key, feature row) of the split, one shard's entry in memory at a time."""
        for shard in self.shard_keys:
            self._open(shard)
            for key, row in self._index.items():
                yield shard, key, self._rows[row]

    def _open(self, shard: Optional[str]) -> None:
        """Load the entry of ``shard`` (and release the previous one)."""
        from harness_infra.cache import EmbeddingCache

        if shard not in self.shard_keys:
            raise ConfigError(f"shard {shard} is not in the training split the image features were computed for")
        self._shard, self._index, self._rows = None, {}, None
        entry = EmbeddingCache(self.cache_dir).load(
            FEATURE_CACHE_KIND, {**self.base_key, "shard": self.shard_keys[shard]}, quiet=True
        )
        if entry is None:
            raise ConfigError(
                f"the cached image features of shard {shard} vanished or changed in {self.cache_dir} during training"
            )
        self._shard, self._index, self._rows = shard, {k: i for i, k in enumerate(entry["keys"])}, entry["features"]


def checked_features(merged: Dict[str, Any], shards: int) -> ImageFeatures:
    """ImageFeatures of a merged payload; refuses an empty training set, logs the count and the skips."""
    if not merged["keys"]:
        raise ConfigError(
            f"no valid training sample in {shards} shard(s) to compute image features from (skipped: {merged['skipped'] or 'none'})"
        )
    features = ImageFeatures(merged["keys"], merged["features"], merged["shards"])
    log.info(
        "trunk features: %d images x %d dims from %d shard(s)%s",
        len(features.keys),
        features.features.shape[1],
        shards,
        f", skipped {merged['skipped']}" if merged["skipped"] else "",
    )
    return features


class FeatureInputCLIP(nn.Module):
    """An open_clip CLIP with a timm image tower that takes the trunk's pooled features instead of pixels.

    ``forward(trunk_features, text)`` = the model's own outputs with ``visual.trunk`` skipped: image features =
    normalise(visual.head(trunk_features)), text features = normalise(encode_text(text)) (run by
    ``towers.text_trim.encode_text_trimmed``, so token batches may be cut to their longest caption), logit_scale.exp()
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
        out = {
            "image_features": F.normalize(self.clip.visual.head(trunk_features), dim=-1),
            "text_features": F.normalize(encode_text_trimmed(self.clip, text), dim=-1),
            "logit_scale": self.clip.logit_scale.exp(),
        }
        if getattr(self.clip, "logit_bias", None) is not None:
            out["logit_bias"] = self.clip.logit_bias
        return out
