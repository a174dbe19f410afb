"""The features stage: the inputs a family trains from, precomputed once into its feature cache
(``Family.build_features``; the family that has one lists ``features`` among its stages): x0 of every training image
(and its flipped view) and the text features of EVERY caption source of every sample, one cache entry per shard, so
the trainer draws each sample's caption with captiondata's mixer and loads that source's features instead of
encoding per batch.

The entries live in the trainer's feature cache (``train.feature_cache_dir``, default ``{run.out_root}/features``,
``pipeline.families.feature_cache_dir``), keyed by encoder weights, preprocessing and shard files, where the train
stage finds them; this stage's folder holds its key and a marker with the counts and sizes. Key: the text encoder,
the image space and size, the flip setting, the data fields the loader reads, the data (and recaption) fingerprint.
Rank 0 builds; other ranks wait.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from harness_infra.stagecache import key_fields
from pipeline.families import family_of
from pipeline.infos import DataInfo, FeaturesInfo
from pipeline.registry import RunContext, Stage
from pipeline.stages.recaption import read_key, recaption_output, recaptioned_data


def key(ctx: RunContext) -> Dict[str, Any]:
    """What determines the cached features."""
    cfg = ctx.cfg
    key = {
        "text_encoder": key_fields(cfg.model.text_encoder),
        "image_space": key_fields(cfg.model.image_space),
        "image_size": cfg.model.image_size,
        "flip": cfg.train.flip,
        "data": key_fields(cfg.data),
        "concat_separator": cfg.mix.concat_separator if cfg.mix.strategy == "concat" else None,
        "data_fingerprint": ctx.output(DataInfo).fingerprint,
    }
    recaptioned = recaption_output(ctx)
    if recaptioned is not None:
        key["recaption"] = read_key(cfg, recaptioned)
    return key


def run(ctx: RunContext, out_dir: Optional[str]) -> FeaturesInfo:
    """Encode every shard missing from the cache; report images, texts and sizes (per million images too)."""
    return family_of(ctx.cfg).build_features(ctx.cfg, recaptioned_data(ctx))


STAGE = Stage(
    name="features",
    needs=("data",),
    after=("recaption",),
    output=FeaturesInfo,
    key=key,
    run=run,
    ranks="rank0_builds",
    label=lambda ctx: ctx.cfg.data.name,
)  # by data set: a sweep over p shares one feature pass
