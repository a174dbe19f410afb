"""The features stage (``trainer=dit``): x0 of every training image (and its flipped view) and the text features of
EVERY caption source of every sample, one cache entry per shard (``train_dit.features``), so the trainer draws each
sample's caption with captiondata's mixer and loads that source's features instead of encoding per batch.

The entries live in the trainer's feature cache (``train.feature_cache_dir``, default ``{run.out_root}/features``),
keyed by encoder weights, preprocessing and shard files, where the train stage finds them; this stage's folder holds
its key and a marker with the counts and sizes. Key: the text encoder, the image space and size, the flip setting,
the data fields the loader reads, the data (and recaption) fingerprint. Rank 0 builds; other ranks wait.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from harness_infra.errors import require
from harness_infra.stagecache import key_fields
from pipeline.registry import RunContext, Stage
from pipeline.stages.recaption import recaptioned_data


def cache_dir(cfg: Any) -> str:
    """The feature cache the train stage reads (the same rule as ``pipeline.stages.train.run``)."""
    return cfg.train.feature_cache_dir or os.path.join(cfg.run.out_root, "features")


def key(ctx: RunContext) -> Dict[str, Any]:
    """What determines the cached features."""
    cfg = ctx.cfg
    require(cfg.trainer == "dit", f"run.stages lists features, which precomputes DiT inputs, but trainer={cfg.trainer}; drop it or set trainer=dit")
    key = {"text_encoder": key_fields(cfg.model.text_encoder), "image_space": key_fields(cfg.model.image_space),
           "image_size": cfg.model.image_size, "flip": cfg.train.flip, "data": key_fields(cfg.data),
           "concat_separator": cfg.mix.concat_separator if cfg.mix.strategy == "concat" else None,
           "data_fingerprint": ctx.infos["data"]["fingerprint"]}
    if "recaption" in ctx.infos:
        key["recaption"] = {"fingerprint": ctx.infos["recaption"]["fingerprint"], "member": ctx.infos["recaption"]["member"],
                            "layout_mode": cfg.recaption.layout_mode}
    return key


def run(ctx: RunContext, out_dir: Optional[str]) -> Dict[str, Any]:
    """Encode every shard missing from the cache; report images, texts and sizes (per million images too)."""
    from train_dit.features import bytes_per_million, ensure_features
    from train_dit.image import ImageSpace
    from train_dit.text import TextEncoder

    cfg = ctx.cfg
    device = torch.device("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
    text = TextEncoder(cfg.model.text_encoder, device)
    space = ImageSpace(cfg.model.image_space, device, seed=cfg.train.seed)
    space.check(cfg.model)
    store = ensure_features(recaptioned_data(cfg, ctx.infos), cfg.mix, text, space, cfg.model.image_size, cfg.train.flip,
                            cache_dir(cfg), cfg.train.feature_batch_size)
    return {"cache_dir": os.path.abspath(cache_dir(cfg)), "images": len(store.images.keys), "texts": len(store.index),
            "bytes": store.nbytes(), "bytes_per_million_images": bytes_per_million(store),
            "x0_shape": list(store.images.features.shape[1:]), "text_dim": text.dim, "skipped": store.skipped}


STAGE = Stage(name="features", needs=("data",), key=key, run=run, ranks="rank0_builds",
              label=lambda ctx: ctx.cfg.data.name)  # by data set: a sweep over p shares one feature pass
