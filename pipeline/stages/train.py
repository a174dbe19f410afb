"""The train stage: the configured family (``trainer=``) trains on the mixed captions of the data stage's shards.

Before training, the train split must hold the caption fields the label draws from; after it, the realised mixture
must agree with p (``captiondata.realised``); either failing publishes nothing.

Key: the model, the recipe and the mixer (their fields that change the weights, as declared on each field), the
data fields the loader reads, and the data fingerprint. Every rank trains (DDP); rank 0 writes the marker. A failed
run resumes from its latest checkpoint in the same folder.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from captiondata.reader import expand_shards
from captiondata.realised import (
    MIN_COVERAGE,
    check_fields,
    check_mixture,
    field_presence,
    needed_sources,
    realised_mixture,
    sum_epochs,
)
from harness_infra.errors import require
from harness_infra.ranks import is_main
from harness_infra.stagecache import content_hash, key_fields
from pipeline.families import family_of, train_result_info
from pipeline.infos import DataInfo, TrainInfo
from pipeline.registry import RunContext, Stage
from pipeline.stages.recaption import read_key, recaption_output, recaptioned_data
from training.monitor import read_epochs


def key(ctx: RunContext) -> Dict[str, Any]:
    """What determines the trained weights."""
    cfg = ctx.cfg
    key = {
        "trainer": cfg.trainer,
        "model": key_fields(cfg.model),
        "train": key_fields(cfg.train),
        "mix": cfg.mix.stage_key(),  # key_fields without the reduction keys at their defaults
        "data": key_fields(cfg.data),
        "data_fingerprint": ctx.output(DataInfo).fingerprint,
    }
    recaptioned = recaption_output(ctx)
    if (
        recaptioned is not None
    ):  # trained on the recaption stage's shards: its output, and how it is read, decide the weights
        key["recaption"] = {**read_key(cfg, recaptioned), "splits": list(cfg.recaption.splits)}
    return key


def recipe_hash(ctx: RunContext) -> str:
    """The content hash of the train key (``key``) without ``train.seed``: what the training seeds of one table row
    share (``report.tables.seed_rows`` averages the runs with the same recipe)."""
    recipe = key(ctx)
    recipe["train"] = {name: value for name, value in recipe["train"].items() if name != "seed"}
    return content_hash(recipe)


def min_coverage(cfg: Any) -> float:
    """The least caption coverage the label needs (``recaption.min_coverage``; its default without a recaption stage)."""
    return cfg.recaption.min_coverage if cfg.recaption is not None else MIN_COVERAGE


def recaption_failures(ctx: RunContext) -> Dict[str, int]:
    """The recaption stage's failures by reason on the train split ({} without a recaption stage)."""
    info = recaption_output(ctx)
    return dict(((info.splits if info is not None else None) or {}).get("train", {}).get("failed") or {})


def run(ctx: RunContext, out_dir: Optional[str]) -> TrainInfo:
    """Check the train split has the caption fields the label needs, train (resuming from the folder's latest
    checkpoint), then check the realised mixture against the label (``captiondata.realised``): a LabelError publishes
    nothing. Returns the family's result with the ``mixture`` section every record carries."""
    cfg = ctx.cfg
    family = family_of(cfg)
    recipe = family.prepare(cfg.train, cfg)
    data = recaptioned_data(ctx)
    needed = needed_sources(cfg.mix.strategy, cfg.mix.p_original)
    failures = recaption_failures(ctx)
    check_fields(
        field_presence(expand_shards(data.shards("train")), data.layout),
        data.layout,
        needed,
        min_coverage(cfg),
        failures,
    )
    info = TrainInfo.from_json(train_result_info(family.train(cfg.model, recipe, data, cfg.mix, out_dir)))
    if not is_main():  # rank 0 reads the run's epoch reports and checks them
        return info
    mixture = realised_mixture(
        sum_epochs(read_epochs(out_dir)), cfg.mix.strategy, cfg.mix.p_original, min_coverage(cfg)
    )
    check_mixture(mixture, failures)
    return info.replace(mixture=mixture)


def check(cfg: Any) -> None:
    """Caption reductions and several positives per image (``mix.*_reduce``, ``mix.positives``) need a family whose
    trainer reads them (``Family.reduces_captions``); the others train on whole captions."""
    reduction = cfg.mix.reduction()
    require(
        family_of(cfg).reduces_captions or not reduction,
        f"mix: {', '.join(f'mix.{k}={v}' for k, v in reduction.items())} with trainer={cfg.trainer}, which trains on "
        "whole captions (one per image): drop the reduction or choose a family that reads it",
    )


STAGE = Stage(
    name="train",
    needs=("data",),
    after=("recaption", "features"),
    output=TrainInfo,
    key=key,
    run=run,
    ranks="all",
    check=check,
    version=2,
)  # 2: records carry the checked mixture
