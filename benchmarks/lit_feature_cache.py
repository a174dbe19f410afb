"""LiT step cost: training from cached trunk features (FeatureInputCLIP) vs the same model on pixels.

Both sides run the identical optimizer step of the trainer (``train_clip.step.train_step``: open_clip ClipLoss,
AdamW, clipping) on the same RecapLiT model (locked FID Inception at ``--image-size``, trainable MiniLM), the
same batch of real Flickr8k images and captions, the same threads. The peer is the plain path without the
cache: every step runs the locked trunk's forward on pixels (no backward through it: it has no trainable
parameter). Steps alternate between the two sides so machine load hits both alike; medians are reported.
The one-off cost of computing the features is reported as well (images/s of the trunk alone).

    python benchmarks/lit_feature_cache.py                       # $RECAP_DATA_ROOT/flickr8k, 299 px, batch 32
    python benchmarks/lit_feature_cache.py --image-size 160 --steps 6

Last line: ``lit: cached X samples/s vs pixels Y samples/s, ratio R``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from _common import run_script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    """Time both step variants and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side (after one warm-up step each)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from PIL import Image

    import train_clip  # noqa: F401
    from captiondata.builders.flickr8k import read_captions
    from captiondata.config import default_data_root
    from towers.pretrained import TowerSpec
    from towers.text_trim import text_pad_id, trim_padding
    from train_clip.config import ClipModelConfig, StageConfig, TrainConfig
    from train_clip.frozen_features import FeatureInputCLIP
    from train_clip.models import create_clip, create_tokenizer, eval_transform
    from train_clip.optim import build_optimizer
    from train_clip.step import StepContext, make_loss, train_step
    from training.distributed import DistEnv
    from training.precision import precision_context

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    folder = os.path.join(default_data_root(), "flickr8k")
    captions = read_captions(folder)
    names = [n for n in sorted(captions) if os.path.isfile(os.path.join(folder, "images", n))][: args.batch]
    cfg = ClipModelConfig(name=f"RecapLiT-bench-{args.image_size}", tower=TowerSpec(image_size=args.image_size))
    model = create_clip(cfg, args.image_size, torch.device("cpu"))
    transform = eval_transform(model)
    images = torch.stack([transform(Image.open(os.path.join(folder, "images", n)).convert("RGB")) for n in names])
    tokens = trim_padding(create_tokenizer(cfg)([" ".join(captions[n]) for n in names]), text_pad_id(model))

    started = time.perf_counter()
    with torch.inference_mode():
        model.visual.trunk.eval()
        features = model.visual.trunk(images)
    trunk_rate = len(names) / (time.perf_counter() - started)

    recipe = TrainConfig(stages=[StageConfig(image_size=args.image_size, batch_size=args.batch, lr=1e-5)])
    loss = make_loss(DistEnv(), False, False)
    sides = {
        "cached": (FeatureInputCLIP(model), {"image": features.clone(), "text": tokens}),
        "pixels": (model, {"image": images, "text": tokens}),
    }
    autocast, scaler = precision_context("fp32", torch.device("cpu"))
    contexts = {
        name: StepContext(m, loss, build_optimizer(model, recipe, recipe.stages[0]), autocast, scaler, 1.0)
        for name, (m, _) in sides.items()
    }
    model.train()
    times = {name: [] for name in sides}
    for step in range(args.steps + 1):
        for name, (_, batch) in sides.items():
            begin = time.perf_counter()
            train_step(contexts[name], [batch])
            if step:  # the first step of each side is warm-up
                times[name].append(time.perf_counter() - begin)
    rates = {name: args.batch / statistics.median(t) for name, t in times.items()}
    print(
        f"trunk alone (one-off feature pass): {trunk_rate:.1f} images/s at {args.image_size} px, {args.threads} threads"
    )
    print(f"text tokens per caption (batch max): {tokens.shape[1]}")
    print(
        f"lit: cached {rates['cached']:.1f} samples/s vs pixels {rates['pixels']:.1f} samples/s, ratio {rates['cached'] / rates['pixels']:.2f}"
    )


if __name__ == "__main__":
    run_script(main)
