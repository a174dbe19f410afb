"""Loader throughput against the trainer's consumption, tar parsing against tarfile, JPEG draft decoding's effect.

Everything runs in this process on one core (torch threads 1, ``num_workers=0``), repeats interleaved, medians:

- tar: microseconds per member of ``captiondata.reader._tar_members`` (its own ustar/GNU/pax walker) against the
  tarfile streaming reader it replaced (``tarfile_members``, the previous code) over the same shards;
- loader: images/s of ``CaptionLoader`` (tar read, validation, caption mixing, decode, the model's training transform
  ``RandomResizedCrop`` at ``--size``, collate, open_clip tokenization) on Flickr8k's 128 px train shards and on shards
  of the same images upscaled to ``--big`` px (bicubic, JPEG quality 90; ``--big-images`` of them), with JPEG draft
  decoding off (the default) and on (``jpeg_draft=True``); a plain PIL open/convert/transform loop as the peer;
- trainer: samples/s of train_clip's optimizer step (``train_clip.step.train_step``: forward, contrastive loss,
  backward, AdamW) on the same model and batch with in-memory tensors, one thread: what the loader must keep up with;
- draft pixels: mean |difference| of the final tensors with and without draft on the big shards, for the evaluation
  transform (Resize + CenterCrop) and the training transform (the same crop box, scaled), normalised and in grey levels.

Per setting: ``loader SETTING: N img/s/core vs trainer T samples/s/core, ratio R``. Last line (the default loader, no
draft, on the slower of the two shard sets): ``loader: N img/s/core vs trainer T samples/s/core, ratio R``.

Usage: python benchmarks/loader.py [--shard-dir DIR] [--images 1500] [--model RecapCLIP-tiny] [--size 64] [--batch 64]
[--big 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import sys
import tarfile
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from _common import run_script  # noqa: E402
from PIL import Image  # noqa: E402

from captiondata.build import build_shards, flickr8k_root  # noqa: E402
from captiondata.config import DataConfig, MixConfig  # noqa: E402
from captiondata.counters import SampleCounters  # noqa: E402
from captiondata.loader import CaptionLoader  # noqa: E402
from captiondata.reader import _CountingReader, _ends_cleanly, _tar_members, expand_shards  # noqa: E402


def tarfile_members(url: str):
    """The previous ``_tar_members``: tarfile's streaming reader (mode ``r|*``) with the same end-of-archive check."""
    with open(url, "rb") as stream:
        counting = _CountingReader(stream)
        with tarfile.open(fileobj=counting, mode="r|*") as archive:
            for info in archive:
                if info.isreg():
                    yield info.name, archive.extractfile(info).read()
            _ends_cleanly(counting, archive.offset)


def time_tar(urls: List[str], ours: bool) -> float:
    """Microseconds per member over ``urls``."""
    members, start = 0, time.perf_counter()
    for url in urls:
        for _ in _tar_members(url, SampleCounters(max_workers=0)) if ours else tarfile_members(url):
            members += 1
    return (time.perf_counter() - start) / members * 1e6


def upscaled_shards(source: List[str], out_dir: str, size: int, limit: int) -> str:
    """Rewrite the first ``limit`` samples of ``source`` with their JPEG upscaled to ``size`` px on the shorter side
    (bicubic, quality 90), every other member byte for byte; returns the glob spec (reused when already written)."""
    done = os.path.join(out_dir, f"done-{size}-{limit}")
    spec = os.path.join(out_dir, "train-*.tar")
    if os.path.exists(done):
        return spec
    os.makedirs(out_dir, exist_ok=True)
    written, shard, tar = 0, 0, None
    for url in source:
        with tarfile.open(url, "r") as archive:
            for info in archive:
                if not info.isreg():
                    continue
                data = archive.extractfile(info).read()
                if info.name.endswith(".jpg"):
                    if written >= limit:
                        break
                    if tar is None or written % 250 == 0:
                        if tar is not None:
                            tar.close()
                        tar = tarfile.open(os.path.join(out_dir, f"train-{shard:06d}.tar"), "w")
                        shard += 1
                    image = Image.open(io.BytesIO(data)).convert("RGB")
                    scale = size / min(image.size)
                    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
                    buffer = io.BytesIO()
                    image.save(buffer, "JPEG", quality=90)
                    data = buffer.getvalue()
                    written += 1
                if tar is not None:
                    member = tarfile.TarInfo(info.name)
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
        if written >= limit:
            break
    if tar is not None:
        tar.close()
    open(done, "w").close()
    return spec


def time_loader(
    cfg: DataConfig, transform: Callable, tokenizer: Callable, limit: int, draft: bool, batch: int
) -> float:
    """Images/s of CaptionLoader (one process) over its first ``limit`` images."""
    loader = CaptionLoader(
        cfg,
        MixConfig(p=0.5),
        image_transform=transform,
        tokenize=tokenizer,
        batch_size=batch,
        num_workers=0,
        jpeg_draft=draft,
        drop_last=False,
    )
    seen, start = 0, time.perf_counter()
    for out in loader:
        seen += len(out["key"])
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start)


def time_plain_pil(files: List[str], transform: Callable) -> float:
    """Images/s of a plain PIL open/convert/transform loop."""
    start = time.perf_counter()
    for path in files:
        transform(Image.open(path).convert("RGB"))
    return len(files) / (time.perf_counter() - start)


def trainer_rate(model_name: str, size: int, batch: int, steps: int) -> float:
    """Samples/s of train_clip's optimizer step on in-memory tensors (fp32, one thread), median over ``steps``."""
    import train_clip  # noqa: F401
    from train_clip.config import ClipModelConfig, StageConfig, TrainConfig
    from train_clip.models import create_clip, create_tokenizer
    from train_clip.optim import build_optimizer
    from train_clip.step import StepContext, make_loss, train_step
    from training.distributed import DistEnv
    from training.precision import precision_context

    cfg = ClipModelConfig(name=model_name)
    model = create_clip(cfg, size, torch.device("cpu"))
    tokens = create_tokenizer(cfg)([f"a photo of a dog number {i} running on the grass" for i in range(batch)])
    recipe = TrainConfig(stages=[StageConfig(image_size=size, batch_size=batch, lr=1e-4)])
    autocast, scaler = precision_context("fp32", torch.device("cpu"))
    ctx = StepContext(
        model,
        make_loss(DistEnv(), False, False),
        build_optimizer(model, recipe, recipe.stages[0]),
        autocast,
        scaler,
        1.0,
    )
    model.train()
    data = {"image": torch.randn(batch, 3, size, size), "text": tokens}
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        train_step(ctx, [data])
        if step:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def draft_difference(spec: str, transform: Callable, n: int) -> Dict[str, float]:
    """Mean |full - draft| over the first ``n`` images of ``spec`` of the final tensors (after Normalize: ``normalised``)
    and in 8-bit grey levels (before Normalize, x 255: ``levels``). A ``RandomResizedCrop`` transform draws its box on
    the full image and takes the same box, scaled, on the drafted one (so only decoding differs, not the draw)."""
    from torchvision import transforms as T
    from torchvision.transforms import functional as F

    from captiondata.decode import decode_image
    from captiondata.loader import draft_rule
    from captiondata.reader import raw_samples

    steps = list(transform.transforms)
    rule = draft_rule(T.Compose(steps[:-2]))
    crop = steps[0] if isinstance(steps[0], T.RandomResizedCrop) else None
    tail = T.Compose(steps[1:-1] if crop is not None else steps[:-1])
    normalize = steps[-1]
    generator = torch.Generator().manual_seed(0)
    diffs: Dict[str, List[float]] = {"normalised": [], "levels": []}
    for index, raw in enumerate(raw_samples(expand_shards(spec), SampleCounters(max_workers=0))):
        if index >= n:
            break
        full, drafted = decode_image(raw["jpg"]), decode_image(raw["jpg"], draft=rule)
        if crop is not None:
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
            top, left, height, width = crop.get_params(full, crop.scale, crop.ratio)
            sx, sy = drafted.width / full.width, drafted.height / full.height
            full = F.resized_crop(full, top, left, height, width, crop.size, crop.interpolation)
            drafted = F.resized_crop(
                drafted,
                round(top * sy),
                round(left * sx),
                round(height * sy),
                round(width * sx),
                crop.size,
                crop.interpolation,
            )
        a, b = tail(full), tail(drafted)
        diffs["levels"].append(float((a - b).abs().mean()) * 255)
        diffs["normalised"].append(float((normalize(a) - normalize(b)).abs().mean()))
    return {k: statistics.mean(v) for k, v in diffs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-dir", default="cache/bench/flickr8k")
    parser.add_argument("--images", type=int, default=1500, help="images timed per loader run")
    parser.add_argument(
        "--model", default="RecapCLIP-tiny", help="train_clip model name (its training transform and step)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=64,
        help="training image size (RecapCLIP-tiny trains at 64 px; CLIPA's first stage at 112)",
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--big", type=int, default=512, help="shorter side of the upscaled shards")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trainer-steps", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    import train_clip  # noqa: F401
    from train_clip.config import ClipModelConfig
    from train_clip.models import create_clip, create_tokenizer, eval_transform, train_transform

    cfg = DataConfig(
        name="flickr8k",
        builder="flickr8k",
        shard_dir=args.shard_dir,
        samples_per_shard=250,
        shuffle_buffer=0,
        num_workers=0,
    )
    from captiondata.builders.flickr8k import check_root

    root = flickr8k_root(cfg)
    check_root(root)  # a missing Flickr8k folder: one error line, whatever shards an earlier run left
    build_shards(cfg)
    small_urls = expand_shards(cfg.shards("train"))
    big_spec = upscaled_shards(
        small_urls,
        os.path.join(os.path.dirname(args.shard_dir.rstrip("/")) or ".", f"flickr8k_{args.big}"),
        args.big,
        args.images,
    )
    big_cfg = DataConfig(name="flickr8k", builder="none", train_shards=big_spec, shuffle_buffer=0, num_workers=0)
    model = create_clip(ClipModelConfig(name=args.model), args.size, torch.device("cpu"))
    transform, evaluation = train_transform(model), eval_transform(model)
    tokenizer = create_tokenizer(ClipModelConfig(name=args.model))
    with open(os.path.join(root, "Flickr_8k.trainImages.txt")) as handle:
        files = [os.path.join(root, "images", line.strip()) for line in handle if line.strip()][: args.images]

    settings = {
        "flickr8k_128px": (cfg, False),
        f"upscaled_{args.big}px": (big_cfg, False),
        f"upscaled_{args.big}px_draft": (big_cfg, True),
    }
    rates: Dict[str, List[float]] = {name: [] for name in list(settings) + ["plain_pil", "trainer"]}
    tar_ours, tar_ref = [], []
    time_plain_pil(files[:200], transform)  # warm the page cache
    for repeat in range(args.repeats):
        tar_ref.append(time_tar(small_urls[:4], ours=False))
        tar_ours.append(time_tar(small_urls[:4], ours=True))
        rates["plain_pil"].append(time_plain_pil(files, transform))
        for name, (data_cfg, draft) in settings.items() if repeat % 2 == 0 else reversed(list(settings.items())):
            rates[name].append(time_loader(data_cfg, transform, tokenizer, args.images, draft, args.batch))
        rates["trainer"].append(trainer_rate(args.model, args.size, args.batch, args.trainer_steps))
    med = {name: statistics.median(v) for name, v in rates.items()}
    trainer = med["trainer"]
    print(
        f"model {args.model} at {args.size} px, batch {args.batch}, torch threads 1, loader 0 workers, {args.repeats} interleaved repeats (medians)"
    )
    print(
        f"tar: ours {statistics.median(tar_ours):.1f} us/member vs tarfile {statistics.median(tar_ref):.1f} us/member, "
        f"ratio {statistics.median(r / o for r, o in zip(tar_ref, tar_ours)):.2f} (Flickr8k shards, 3 members per sample)"
    )
    print(f"plain PIL loop (decode + transform, 128 px files): {med['plain_pil']:.1f} img/s")
    print(f"trainer ({args.model} step, fp32): {trainer:.1f} samples/s/core")
    for name in settings:
        print(
            f"loader {name}: {med[name]:.1f} img/s/core vs trainer {trainer:.1f} samples/s/core, ratio {med[name] / trainer:.2f}"
        )
    for label, chain in (("Resize + CenterCrop", evaluation), ("RandomResizedCrop, same box", transform)):
        diff = draft_difference(big_spec, chain, 200)
        print(
            f"draft pixels ({args.big} px -> {args.size} px, {label}, 200 images): mean |diff| of the final tensor "
            f"{diff['normalised']:.4f} (normalised units), {diff['levels']:.2f} grey levels of 255"
        )
    slow = min(("flickr8k_128px", f"upscaled_{args.big}px"), key=lambda name: med[name])
    print(
        f"loader: {med[slow]:.1f} img/s/core vs trainer {trainer:.1f} samples/s/core, ratio {med[slow] / trainer:.2f}"
    )


if __name__ == "__main__":
    run_script(main)
