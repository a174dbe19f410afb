"""The train stage: the configured family (``trainer=``) trains on the mixed captions of the data stage's shards.

Key: the model, the recipe and the mixer (their fields that change the weights, as declared on each field), the
data fields the loader reads, and the data fingerprint. Every rank trains (DDP); rank 0 writes the marker. A failed
run resumes from its latest checkpoint in the same folder.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

from harness_infra.stagecache import key_fields
from pipeline.families import FAMILIES, train_result_info
from pipeline.registry import RunContext, Stage
from pipeline.stages.recaption import recaptioned_data


def key(ctx: RunContext) -> Dict[str, Any]:
    """What determines the trained weights."""
    cfg = ctx.cfg
    key = {"trainer": cfg.trainer, "model": key_fields(cfg.model), "train": key_fields(cfg.train), "mix": key_fields(cfg.mix),
           "data": key_fields(cfg.data), "data_fingerprint": ctx.infos["data"]["fingerprint"]}
    if "recaption" in ctx.infos:  # trained on the recaption stage's shards: its output, and how it is read, decide the weights
        key["recaption"] = {"fingerprint": ctx.infos["recaption"]["fingerprint"], "member": ctx.infos["recaption"]["member"],
                            "layout_mode": cfg.recaption.layout_mode, "splits": list(cfg.recaption.splits)}
    return key


def run(ctx: RunContext, out_dir: Optional[str]) -> Dict[str, Any]:
    """Train (resuming from the folder's latest checkpoint) and return the family's result."""
    cfg = ctx.cfg
    recipe = cfg.train
    if hasattr(recipe, "resume"):
        recipe = dataclasses.replace(recipe, resume="latest")
    if getattr(recipe, "feature_cache_dir", "unset") is None:
        recipe = dataclasses.replace(recipe, feature_cache_dir=os.path.join(cfg.run.out_root, "features"))
    family = FAMILIES[cfg.trainer]
    result = family.train(cfg.model, recipe, recaptioned_data(cfg, ctx.infos), cfg.mix, out_dir)
    return train_result_info(result)


STAGE = Stage(name="train", needs=("data",), key=key, run=run, ranks="all")  # after recaption when run.stages lists it
