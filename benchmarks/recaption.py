"""Recaption throughput: batched generation with decoding in worker threads vs one image at a time.

Both sides run the same backend (``hf``, transformers ``generate``), the same model, the same images (the first N
Flickr8k training images, written once as shards) and the same greedy settings, through the recaption stage's own
per-shard code (``recaption.stage.recaption_split``: tar read, decode, generate, atomic shard write):
- batched: ``recaption.batch_size=B`` with ``num_workers=2`` decoding threads preparing the next batch;
- one at a time: ``batch_size=1``, ``num_workers=0`` (decode, then generate, image by image).
The model defaults to the tiny random LLaVA of the tests (``tests/tiny_vlm.py``) (the only captioner that exists offline; a real
7B LLaVA moves the ratio); pass ``--model`` for a local folder or hub id. Both sides must write the same key set.
Last line: ``recaption: N img/s, ratio R vs one at a time``.

Usage: python benchmarks/recaption.py [--images 96] [--batch-size 16] [--max-new-tokens 32] [--model PATH]
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import tempfile
import time

from _common import run_script  # noqa: E402  (before the folder leaves the import path)

# ``python benchmarks/recaption.py`` puts this folder first on the import path, where this file would shadow the
# ``recaption`` package it benchmarks: drop the folder (the benchmarks import only _common from it, above).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from harness_infra.errors import ConfigError  # noqa: E402


def parse() -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--model", default=None, help="captioner folder or hub id (default: the tiny random LLaVA)")
    parser.add_argument("--work-dir", default=None)
    return parser.parse_args()


def timed(urls, out_dir, cfg, layout) -> float:
    """Seconds to recaption ``urls`` into ``out_dir`` (the captioner is loaded before the clock starts)."""
    from recaption.captioner import build_captioner
    from recaption.stage import recaption_split

    captioner = build_captioner(cfg)
    start = time.perf_counter()
    recaption_split(
        urls, out_dir, "train", cfg, layout, 10**8, make_captioner=lambda _: captioner, shard_rank=0, shard_world=1
    )
    return time.perf_counter() - start


def main() -> None:
    args = parse()
    import dataclasses

    import torch

    from captiondata.build import build_shards, flickr8k_root
    from captiondata.config import DataConfig
    from recaption.config import RecaptionConfig

    sys.path.insert(
        0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    )  # the tests' tiny VLM
    from tiny_vlm import save_tiny_vlm

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    work = args.work_dir or tempfile.mkdtemp(prefix="recaption-bench-")
    data = DataConfig(
        name="flickr8k",
        builder="flickr8k",
        shard_dir=os.path.join(work, "shards"),
        samples_per_shard=args.images // 4 or 1,
        build_size=args.images,
    )
    if not os.path.isdir(flickr8k_root(data)):
        raise ConfigError(f"Flickr8k not found at {flickr8k_root(data)}; set RECAP_DATA_ROOT or data.source")
    build_shards(data)
    urls = sorted(glob.glob(os.path.join(data.shard_dir, "train-*.tar")))
    model = args.model or save_tiny_vlm(os.path.join(work, "tiny_vlm"))
    batched = RecaptionConfig(
        name="bench",
        backend="hf",
        model=model,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        num_workers=2,
    )
    single = dataclasses.replace(batched, batch_size=1, num_workers=0)
    t_single = timed(urls, os.path.join(work, "single"), single, data.layout)
    t_batched = timed(urls, os.path.join(work, "batched"), batched, data.layout)
    from recaption.stage import finish_split

    written = {side: finish_split(os.path.join(work, side), "train", len(urls), 1.0) for side in ("single", "batched")}
    if written["single"]["samples"] != written["batched"]["samples"]:
        raise RuntimeError(f"the two sides wrote different sample counts: {written}")
    count = written["batched"]["samples"]
    print(
        f"one at a time: {count / t_single:.1f} img/s ({t_single:.1f} s); batched (batch {args.batch_size}, 2 decode threads): "
        f"{count / t_batched:.1f} img/s ({t_batched:.1f} s); {count} images, {len(urls)} shards; model {model}"
    )
    print(f"recaption: {count / t_batched:.1f} img/s, ratio {t_single / t_batched:.2f} vs one at a time")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    run_script(main)
