"""Loader throughput: decode + transform images/s per core on Flickr8k shards vs a plain PIL loop.

Both sides run in this process, on the same images, the same transform and one thread:
- ours: ``captiondata.loader.CaptionLoader`` over the Flickr8k train shards (tar read, validation,
  caption mixing, decode, transform, collate, tokenize), ``num_workers=0`` so it uses one core;
  also reported with 2 workers (total img/s).
- peer: ``for path in files: transform(Image.open(path).convert("RGB"))`` over the same JPEG files.
Last line: ``loader: N img/s/core, ratio R vs plain PIL``.

Usage: python benchmarks/loader.py [--shard-dir DIR] [--images 3000] [--size 224]
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import open_clip
import torch
from PIL import Image
from torchvision import transforms

from _common import run_script
from captiondata.build import build_shards, flickr8k_root
from captiondata.config import DataConfig, MixConfig
from captiondata.loader import CaptionLoader


def clip_transform(size: int) -> transforms.Compose:
    """open_clip's evaluation preprocessing: resize, centre crop, tensor, CLIP normalisation."""
    return transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])


def time_ours(cfg: DataConfig, transform, tokenizer, limit: int, workers: int) -> float:
    """Images/s of CaptionLoader over the first ``limit`` training images (tokenizer None = raw texts)."""
    loader = CaptionLoader(cfg, MixConfig(p=0.5), image_transform=transform, tokenize=tokenizer, batch_size=50, num_workers=workers)
    seen, start = 0, time.perf_counter()
    for batch in loader:
        seen += len(batch["key"])
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start)


def time_plain_pil(files: list, transform) -> float:
    """Images/s of a plain PIL open/convert/transform loop."""
    start = time.perf_counter()
    for path in files:
        transform(Image.open(path).convert("RGB"))
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-dir", default="cache/bench/flickr8k")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    cfg = DataConfig(name="flickr8k", builder="flickr8k", shard_dir=args.shard_dir, samples_per_shard=250, shuffle_buffer=0, num_workers=0)
    build_shards(cfg)
    transform = clip_transform(args.size)
    root = flickr8k_root(cfg)
    with open(os.path.join(root, "Flickr_8k.trainImages.txt")) as handle:
        files = [os.path.join(root, "images", line.strip()) for line in handle if line.strip()][: args.images]
    time_plain_pil(files[:200], transform)  # warm the page cache for both sides
    peer = time_plain_pil(files, transform)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    ours = time_ours(cfg, transform, None, len(files), workers=0)
    ours_tok = time_ours(cfg, transform, tokenizer, len(files), workers=0)
    ours_2w = time_ours(cfg, transform, tokenizer, len(files), workers=2)
    print(f"images: {len(files)} at {args.size} px, torch threads 1")
    print(f"plain PIL loop (decode + transform): {peer:.1f} img/s (1 core)")
    print(f"CaptionLoader (tar read, validate, mix, decode + transform, collate), 0 workers: {ours:.1f} img/s (1 core)")
    print(f"  + open_clip tokenization in the loader: {ours_tok:.1f} img/s (1 core); 2 workers: {ours_2w:.1f} img/s total")
    print(f"loader: {ours:.1f} img/s/core, ratio {ours / peer:.2f} vs plain PIL")


if __name__ == "__main__":
    run_script(main)
