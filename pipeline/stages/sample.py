"""The sample stage (a family with ``Family.sampling``): the trained export generates images from prompts with
classifier-free guidance; each rank draws its share (prompt i on rank i mod world size, seed ``sample.seed + i``), writes
``images/{i:05d}.png`` + ``.json`` (prompt, seed, guidance scale, steps, sampler), and rank 0 waits for every
image, then writes ``prompts.jsonl`` and ``grid.png`` (prompts under the images).

Prompts: ``train.sample.prompts``, else the first ``num_prompts`` samples of ``prompt_split``: their original caption,
first recaption, or both (raw and recaption prompts, as the paper's COCO and COCO-Recap). Key: the train stage's hash,
the sampling settings and the data fingerprint.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch

from harness_infra.errors import require
from harness_infra.ranks import local_rank, rank, wait_until, world_size
from harness_infra.stagecache import key_fields
from pipeline.families import family_of
from pipeline.infos import DataInfo, SampleInfo, TrainInfo
from pipeline.registry import RunContext, Stage
from pipeline.stages.recaption import recaptioned_data


def prompts_of(ctx: RunContext) -> List[str]:
    """The prompts to sample (see the module docstring)."""
    from captiondata.counters import SampleCounters
    from captiondata.reader import expand_shards, raw_samples, valid_records

    cfg = ctx.cfg
    prompts_from_records = family_of(cfg).sampling.prompts_from_records
    spec = cfg.train.sample
    if spec.prompts:
        return list(spec.prompts)
    data = recaptioned_data(ctx)
    counters = SampleCounters(max_workers=1)
    records = valid_records(
        raw_samples(expand_shards(data.shards(spec.prompt_split)), counters, data.max_member_bytes),
        data.layout,
        counters,
        data.max_image_pixels,
    )
    prompts = prompts_from_records(records, spec.prompt_source, spec.num_prompts)
    require(bool(prompts), f"train.sample: no prompts in split {spec.prompt_split!r} of data set {cfg.data.name}")
    return prompts


def key(ctx: RunContext) -> Dict[str, Any]:
    """What determines the images."""
    return {
        "train_hash": ctx.output(TrainInfo).hash,
        "sample": key_fields(ctx.cfg.train.sample),
        "data_fingerprint": ctx.output(DataInfo).fingerprint,
    }


def run(ctx: RunContext, out_dir: Optional[str]) -> SampleInfo:
    """Generate this rank's share; on rank 0 wait for all, then index them and draw the grid."""
    sampling = family_of(ctx.cfg).sampling
    spec = ctx.cfg.train.sample
    export_dir = ctx.output(TrainInfo).export_dir
    prompts = prompts_of(ctx)
    device = f"cuda:{local_rank()}" if spec.device != "cpu" and torch.cuda.is_available() else "cpu"
    pipeline = sampling.open(export_dir, device, spec.use_ema)
    sampling.write_samples(pipeline, prompts, out_dir, spec, rank(), world_size(), export_dir)
    folder = os.path.join(out_dir, "images")
    if rank() != 0:
        return SampleInfo(images=len(prompts))
    wait_until(
        lambda: all(os.path.isfile(os.path.join(folder, f"{i:05d}.json")) for i in range(len(prompts))),
        f"{len(prompts)} samples in {folder}",
    )
    grid_path = sampling.write_grid(out_dir, prompts, spec.grid_columns)
    return SampleInfo(
        images=len(prompts),
        grid=grid_path,
        sampler=spec.sampler,
        steps=spec.steps,
        guidance_scale=spec.guidance_scale,
        seed=spec.seed,
        export_dir=export_dir,
    )


STAGE = Stage(name="sample", needs=("train",), after=("recaption",), output=SampleInfo, key=key, run=run, ranks="all")
