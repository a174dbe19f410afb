"""Precomputed DiT inputs with caption mixing intact: x0 of every image (and of its flipped view) and the text
features of EVERY caption source of every sample, so the loader can let ``captiondata``'s mixer choose per sample
and epoch which source's features to load (PixArt-Sigma's per-sample choice between precomputed prompt features).

One ``EmbeddingCache`` entry per shard (kind ``dit-shards``), keyed like the CLIP frozen-feature cache
(``train_clip.frozen_features``): the encoders' weights (sha256 of every tensor), tokenizer and kept length, the
image preprocessing (transform repr), the image space and its scaling factor, the caption layout, the pixel limit
and the shard file's (name, size, mtime). New weights or preprocessing miss everywhere; a rewritten shard misses alone.
A shard entry holds ``keys`` [N], ``x0`` [N, V, C, S, S] float16 (V = 2 with the flipped view), ``texts`` (every
candidate text: the original, each recaption, and with ``mix.strategy=concat`` each concatenation),
``text_sample`` [T] (owner row of each text), ``text_lengths`` [T] and ``text_features`` [sum of lengths, D] float16
(padding dropped), plus the skip counts. Storage per sample = V x C x S^2 x 2 bytes + (tokens of its texts) x D x 2
bytes; see ``bytes_per_million`` and the README's figures.

``FeatureBatches`` serves training batches from it through ``captiondata.loader.CaptionLoader`` (the very loader
CLIP trains with, so the same (seed, key, epoch) caption draw), looking up the drawn text's features by (key, text).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torchvision import transforms

from captiondata.config import DataConfig, MixConfig
from captiondata.counters import SampleCounters
from captiondata.loader import CaptionLoader, ImageFeatures
from captiondata.reader import expand_shards, raw_samples, valid_records
from harness_infra.cache import EmbeddingCache
from harness_infra.errors import ConfigError
from harness_infra.identity import file_identity, preprocess_identity
from harness_infra.progress import Progress
from train_dit.image import ImageSpace, to_model_range
from train_dit.text import TextEncoder, unpad_features

log = logging.getLogger(__name__)
FEATURE_CACHE_KIND = "dit-shards"
FEATURE_FORMAT = 1


def pixel_transform(image_size: int) -> Callable:
    """PIL image -> float [3, S, S] in [0, 1]: resize the short side to ``image_size`` (antialiased), centre crop."""
    return transforms.Compose(
        [
            transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
        ]
    )


def candidate_texts(original: Optional[str], recaptions: List[str], mix_cfg: MixConfig) -> List[str]:
    """Every text the mixer can emit for a sample (distinct, in order): original, recaptions, and with
    ``concat`` original + separator + each recaption."""
    texts = ([original] if original is not None else []) + list(recaptions)
    if mix_cfg.strategy == "concat" and original is not None:
        texts += [original + mix_cfg.concat_separator + recap for recap in recaptions]
    return list(dict.fromkeys(texts))


def feature_cache_key(
    text: TextEncoder, space: ImageSpace, transform: Callable, data_cfg: DataConfig, mix_cfg: MixConfig, flip: bool
) -> Dict[str, Any]:
    """What the features depend on besides the shard (each shard's entry adds ``"shard": file_identity(url, mtime=True)``)."""
    return {
        "format": FEATURE_FORMAT,
        "text": text.identity(),
        "image": space.identity(),
        "preprocess": preprocess_identity(transform),
        "layout": asdict(data_cfg.layout),
        "max_image_pixels": data_cfg.max_image_pixels,
        "exif_transpose": data_cfg.exif_transpose,
        "flip": flip,
        "concat_separator": mix_cfg.concat_separator if mix_cfg.strategy == "concat" else None,
        "dtype": "float16",
    }


@torch.no_grad()
def compute_shard_features(
    url: str,
    data_cfg: DataConfig,
    mix_cfg: MixConfig,
    text: TextEncoder,
    space: ImageSpace,
    transform: Callable,
    flip: bool,
    batch_size: int,
) -> Dict[str, Any]:
    """The cache payload of one shard (see the module docstring); bad samples skipped and counted with the loader's
    reasons, so they are exactly the samples the caption loader skips."""
    counters = SampleCounters(max_workers=1)
    keys: List[str] = []
    x0_chunks: List[torch.Tensor] = []
    pending: List[torch.Tensor] = []
    texts: List[str] = []
    owners: List[int] = []

    def flush() -> None:
        """Encode the pending images (and their mirror images)."""
        if pending:
            pixels = to_model_range(torch.stack(pending))
            views = [space.encode(pixels)] + ([space.encode(pixels.flip(-1))] if flip else [])
            x0_chunks.append(torch.stack(views, dim=1).half().cpu())
            pending.clear()

    for record in valid_records(
        raw_samples([url], counters, data_cfg.max_member_bytes),
        data_cfg.layout,
        counters,
        data_cfg.max_image_pixels,
        data_cfg.exif_transpose,
    ):
        for candidate in candidate_texts(record.original, record.recaptions, mix_cfg):
            texts.append(candidate)
            owners.append(len(keys))
        keys.append(record.key)
        pending.append(transform(record.image))
        if len(pending) == batch_size:
            flush()
    flush()
    rows: List[torch.Tensor] = []
    for start in range(0, len(texts), batch_size):
        rows.extend(unpad_features(*text.encode(texts[start : start + batch_size])))
    counters.flush()
    skipped = {name: count for name, count in counters.totals().items() if count and name != "samples"}
    return {
        "keys": keys,
        "x0": torch.cat(x0_chunks) if x0_chunks else torch.zeros(0),
        "texts": texts,
        "text_sample": torch.tensor(owners, dtype=torch.long),
        "text_lengths": torch.tensor([int(r.shape[0]) for r in rows], dtype=torch.long),
        "text_features": torch.cat(rows).half() if rows else torch.zeros(0, text.dim, dtype=torch.float16),
        "skipped": skipped,
    }


class FeatureStore:
    """Merged shard payloads (``parts[i]`` of shard ``urls[i]``): ``images`` (ImageFeatures: (shard, key) -> x0 views
    [V, C, S, S]) and ``text(key, text, shard)`` -> features [L, D] float32.

    A sample is its shard and its key, as everywhere in the harness (``captiondata.loader.ImageFeatures``): the same
    key in two shards is two samples, each with its own image and caption features (user shards often restart their
    keys in every shard). A key repeated inside one shard was already dropped and counted by the reader.
    """

    def __init__(self, parts: List[Dict[str, Any]], urls: List[str]) -> None:
        keys: List[str] = []
        shards: List[str] = []
        x0: List[torch.Tensor] = []
        self.skipped: Dict[str, int] = {}
        self.index: Dict[Tuple[str, str, str], Tuple[int, int]] = {}
        chunks: List[torch.Tensor] = []
        offset = 0
        for part, url in zip(parts, urls, strict=True):
            for name, count in part["skipped"].items():
                self.skipped[name] = self.skipped.get(name, 0) + count
            keys.extend(part["keys"])
            shards.extend([url] * len(part["keys"]))
            if part["keys"]:
                x0.append(part["x0"])
            starts = torch.cumsum(part["text_lengths"], 0) - part["text_lengths"]
            for t, (owner, start, length) in enumerate(
                zip(part["text_sample"].tolist(), starts.tolist(), part["text_lengths"].tolist())
            ):
                self.index[(url, part["keys"][owner], part["texts"][t])] = (offset + start, length)
            chunks.append(part["text_features"])
            offset += int(part["text_features"].shape[0])
        if not keys:
            raise ConfigError(f"no valid training sample to train the DiT on (skipped: {self.skipped or 'none'})")
        self.images = ImageFeatures(keys, torch.cat(x0), shards)
        self.text_features = torch.cat(chunks)

    def text(self, key: str, text: str, shard: str) -> torch.Tensor:
        """Features [L, D] float32 of ``text`` as a caption of sample ``key`` of ``shard``."""
        found = self.index.get((shard, key, text))
        if found is None:
            raise KeyError(
                f"no cached text features for sample {key!r} of {shard} and caption {text[:60]!r}; the feature cache is stale"
            )
        start, length = found
        return self.text_features[start : start + length].float()

    def nbytes(self) -> int:
        """Bytes of the stored tensors."""
        return (
            self.images.features.numel() * self.images.features.element_size()
            + self.text_features.numel() * self.text_features.element_size()
        )


def bytes_per_million(store: FeatureStore) -> float:
    """Cache size for one million images at this data set's average caption lengths (bytes)."""
    return store.nbytes() / max(len(store.images.keys), 1) * 1e6


def ensure_features(
    data_cfg: DataConfig,
    mix_cfg: MixConfig,
    text: TextEncoder,
    space: ImageSpace,
    image_size: int,
    flip: bool,
    cache_dir: Optional[str],
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
) -> FeatureStore:
    """The training split's features, one cache entry per shard in ``cache_dir``: rank r computes the missing entries
    of shards r, r + world_size, ...; after ``barrier()`` every rank reads them all. ``cache_dir=None``: in memory."""
    transform = pixel_transform(image_size)
    urls = expand_shards(data_cfg.shards("train"))
    if cache_dir is None:
        with Progress("dit features", total=len(urls), unit="shard", enabled=rank == 0) as progress:
            parts = []
            for url in urls:
                parts.append(compute_shard_features(url, data_cfg, mix_cfg, text, space, transform, flip, batch_size))
                progress.update()
        return FeatureStore(parts, urls)
    cache, base = EmbeddingCache(cache_dir), feature_cache_key(text, space, transform, data_cfg, mix_cfg, flip)
    mine, computed = urls[rank::world_size], 0
    with Progress("dit features", total=len(mine), unit="shard", enabled=rank == 0) as progress:
        for number, url in enumerate(mine, 1):
            key = {**base, "shard": file_identity(url, mtime=True)}
            if cache.load(FEATURE_CACHE_KIND, key, quiet=True) is None:
                cache.save(
                    FEATURE_CACHE_KIND,
                    key,
                    compute_shard_features(url, data_cfg, mix_cfg, text, space, transform, flip, batch_size),
                )
                computed += 1
                log.debug(
                    "dit features: shard %d/%d of rank %d computed (%s)", number, len(mine), rank, os.path.basename(url)
                )
            progress.update()
    log.info(
        "dit features: rank %d computed %d and found %d of its %d shard(s) in %s",
        rank,
        computed,
        len(mine) - computed,
        len(mine),
        cache_dir,
    )
    barrier()
    parts = []
    for url in urls:
        part = cache.load(FEATURE_CACHE_KIND, {**base, "shard": file_identity(url, mtime=True)}, quiet=True)
        if part is None:
            raise ConfigError(
                f"DiT features of shard {url} are missing from {cache_dir} after every rank computed its share"
            )
        parts.append(part)
    store = FeatureStore(parts, urls)
    log.info(
        "dit features: %d images, %d texts, %.1f MB (%.1f GB per million images)%s",
        len(store.images.keys),
        len(store.index),
        store.nbytes() / 1e6,
        bytes_per_million(store) / 1e9,
        f", skipped {store.skipped}" if store.skipped else "",
    )
    return store


class FeatureBatches:
    """CaptionLoader's contract over cached features: batches {x0 [B, V, C, S, S], text_rows [L_i, D] each, key,
    source}; the caption of each sample is drawn by the CaptionLoader's mixer and its features looked up."""

    def __init__(self, loader: CaptionLoader, store: FeatureStore) -> None:
        self.loader, self.store = loader, store

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (order and caption draws depend on it)."""
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def iterate(self, skip_batches: int = 0) -> Iterator[Dict[str, Any]]:
        """This epoch's batches after the first ``skip_batches``."""
        for batch in self.loader.iterate(skip_batches=skip_batches):
            rows = [
                self.store.text(key, text, shard)
                for key, text, shard in zip(batch["key"], batch["text"], batch["shard"])
            ]
            yield {
                "x0": batch["image"],
                "text_rows": rows,
                "text": batch["text"],
                "key": batch["key"],
                "source": batch["source"],
            }

    def epoch_totals(self) -> Dict[str, int]:
        """Raw counter totals of the last epoch on this rank."""
        return self.loader.epoch_totals()

    def epoch_stats(self) -> Dict[str, Any]:
        """Samples, skips and realised original fraction of the last epoch."""
        return self.loader.epoch_stats()
