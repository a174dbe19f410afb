"""The recaption stage: a captioner writes a recaption into every sample of the configured splits, exactly once.

Key: the captioner config (its fields that change captions, as declared on each field), the data fingerprint and
how samples are read (layout, pixel limit). Every rank works on its share of the shards (torchrun), or a Ray actor
pool does (``recaption.engine=ray``); rank 0 writes the marker once every shard is complete. A completed stage whose
captions had failures is not settled: the next run of the experiment retries exactly the failed samples (and the
trainer, keyed on the recaption fingerprint, retrains on the new captions).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

from captiondata.realised import by_count, needed_sources
from harness_infra.errors import LabelError, require
from harness_infra.stagecache import key_fields
from pipeline.infos import DataInfo, RecaptionInfo
from pipeline.registry import RunContext, Stage
from pipeline.stages.data import data_for_training, shard_fingerprint


def check(cfg: Any) -> None:
    """ConfigError (one line) when the recaption stage is listed without a captioner."""
    require(
        cfg.recaption is not None,
        "run.stages lists recaption but no captioner is configured: add +recaption=hf|openai|vllm|precomputed|coca|rewrite",
    )


def key(ctx: RunContext) -> Dict[str, Any]:
    """What determines the recaptions."""
    cfg = ctx.cfg
    check(cfg)
    from recaption.backends.weights import weight_files

    return {
        "recaption": key_fields(cfg.recaption),
        "weight_files": weight_files(cfg.recaption.model),
        "data_fingerprint": ctx.output(DataInfo).fingerprint,
        "layout": key_fields(cfg.data.layout),
        "max_image_pixels": cfg.data.max_image_pixels,
        "exif_transpose": cfg.data.exif_transpose,
    }


def recaption_output(ctx: RunContext) -> Optional[RecaptionInfo]:
    """The recaption stage's output for a stage reading it (None when the run lists no recaption stage). RuntimeError
    on a rank other than 0 that ran the stage itself (rank 0 alone reports it; before the typed outputs such a rank
    failed on the missing ``member`` key)."""
    info = ctx.optional(RecaptionInfo)
    if info is not None and info.member is None:
        raise RuntimeError(
            "the recaption stage's output is reported on rank 0 only; run it first (run.stop_after=recaption), then the rest"
        )
    return info


def read_key(cfg: Any, info: RecaptionInfo) -> Dict[str, Any]:
    """How a stage reading the recaptioned shards keys on them: their fingerprint, the recaption member and how it
    joins the layout (``recaption.layout_mode``)."""
    return {"fingerprint": info.fingerprint, "member": info.member, "layout_mode": cfg.recaption.layout_mode}


def run(ctx: RunContext, out_dir: Optional[str]) -> RecaptionInfo:
    """Recaption every configured split of the data stage's shards into ``out_dir``."""
    cfg = ctx.cfg
    data = data_for_training(cfg, ctx.output(DataInfo))
    specs = {split: data.shards(split) for split in cfg.recaption.splits}
    if cfg.recaption.engine == "ray":
        from recaption.ray_data import recaption_with_ray

        stats = recaption_with_ray(
            specs, out_dir, cfg.recaption, data.layout, data.max_image_pixels, data.exif_transpose
        )
    else:
        from recaption.stage import recaption_data

        stats = recaption_data(
            specs, out_dir, cfg.recaption, data.layout, data.max_image_pixels, exif_transpose=data.exif_transpose
        )
    if not stats:  # a rank other than 0: its share is written, rank 0 reports
        return RecaptionInfo()
    from recaption.stage import load_manifest

    check_coverage(cfg, stats)
    manifests = {split: load_manifest(out_dir, split) for split in cfg.recaption.splits}
    for split in cfg.recaption.splits:
        quality = caption_quality(os.path.join(out_dir, f"{split}-*.tar"), f"{cfg.recaption.name}.txt")
        if quality is not None:
            stats[split] = {**stats[split], "quality": quality}
    return RecaptionInfo(
        fingerprint=shard_fingerprint(manifests),
        member=f"{cfg.recaption.name}.txt",
        splits=stats,
        failed_total=sum(s["failed_total"] for s in stats.values()),
        transient_failures=sum(s["transient_failures"] for s in stats.values()) if cfg.recaption.retry_failed else 0,
    )


def caption_quality(spec: str, member: str) -> Optional[Dict[str, Any]]:
    """The recaptions' faithfulness to the scene graph (``recaption.quality``: attribute precision and recall, object
    recall, invented objects) where the samples store one (the embedded scenes); None for data without scene graphs."""
    from recaption.quality import score_scene_shards

    summary = score_scene_shards(spec, member)
    return summary if summary.get("captions") else None


def check_coverage(cfg: Any, stats: Dict[str, Dict[str, Any]]) -> None:
    """LabelError (one line: coverage, counts, failures by reason) when the label draws from recaptions (p < 1) and a
    recaptioned split ended with a usable recaption for less than ``recaption.min_coverage`` of its samples; the
    stage then writes no marker, so its next run retries the transient failures and checks again."""
    if not needed_sources(cfg.mix.strategy, cfg.mix.p_original)["recaption"]:
        return
    for split, split_stats in stats.items():
        samples, captioned = split_stats["samples"], split_stats["with_recaption"]
        if samples and captioned / samples < cfg.recaption.min_coverage:
            failures = by_count(split_stats["failed"])
            raise LabelError(
                f"recaption {cfg.recaption.name} ({cfg.recaption.backend}): {captioned} of {samples} {split} samples have a "
                f"recaption ({captioned / samples:.4f} < recaption.min_coverage={cfg.recaption.min_coverage:g}); failures: "
                f"{failures}; a p={cfg.mix.p_original} run would train on fallbacks: nothing published"
            )


def settled(info: RecaptionInfo) -> bool:
    """A recaption with transient failures (server errors, timeouts, generation errors) runs again on the next run,
    for those samples only; permanent failures settle (greedy decoding would fail them the same way)."""
    return not info.transient_failures


def recaptioned_data(ctx: RunContext) -> Any:
    """The data config the trainer reads: recaptioned splits from this stage's folder, their recaption member added to
    (``layout_mode=add``) or replacing (``replace``) the layout's recaption sources; other splits as built."""
    cfg = ctx.cfg
    data = data_for_training(cfg, ctx.output(DataInfo))
    info = recaption_output(ctx)
    if info is None:
        return data
    from captiondata.config import CaptionField

    member = CaptionField(info.member, None)
    recaptions = [member] if cfg.recaption.layout_mode == "replace" else [*data.layout.recaptions, member]
    shards = {f"{split}_shards": f"{info.out_dir}/{split}-*.tar" for split in cfg.recaption.splits}
    return dataclasses.replace(data, layout=dataclasses.replace(data.layout, recaptions=recaptions), **shards)


def label(ctx: RunContext) -> str:
    """The folder label: data set and captioner, not the experiment (a sweep over p shares one recaption)."""
    return f"{ctx.cfg.data.name}-{ctx.cfg.recaption.name}"


STAGE = Stage(
    name="recaption",
    needs=("data",),
    output=RecaptionInfo,
    key=key,
    run=run,
    ranks="all",
    settled=settled,
    check=check,
    label=label,
)
