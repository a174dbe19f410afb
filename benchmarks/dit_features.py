"""DiT training step from precomputed features vs the same step encoding on the fly.

Both sides run the trainer's own step (``train_dit.train``: ``prepare_batch`` -> ``noisy_inputs`` -> PixArt forward,
MSE, backward, AdamW, EMA) on the same model, batch size, threads and scenes shards. Cached: the batch comes from
``FeatureBatches`` (x0 and the mixer-drawn caption's text features read from the per-shard cache). On the fly, as
diffusers' example training scripts do: the caption loader decodes and resizes the images, and every batch runs the
image space's encoder (``--space vae``: a random-weight AutoencoderKL at 64 px; ``pixels``: none) and the frozen
text encoder (MiniLM-L6). Loading is in the timed region on both sides (``num_workers=0``); steps alternate between
the sides so machine load hits both alike; medians are reported. The one-off feature-cache build is timed too.

    python benchmarks/dit_features.py                      # DiT-tiny, pixels at 32 px, batch 64, 2 threads
    python benchmarks/dit_features.py --space vae --steps 6
    python benchmarks/dit_features.py --throughput DiT-B/4 --peak-tflops 989   # on a GPU: bf16 samples/s and MFU first

``--throughput PRESET`` first times the bare training step of that preset (256 px in SD-VAE latents: 32x32x4,
random text features of 77 x 768, batch ``--throughput-batch``) in bf16 autocast on the GPU (fp32 on a CPU) and
prints samples/s and, with ``--peak-tflops``, the model FLOPs utilisation: 3 x the forward FLOPs (2 per
multiply-add of every linear layer over the image tokens and text tokens, plus attention's QK^T and AV) per sample.

Last line: ``dit: cached N samples/s vs on-the-fly M samples/s, ratio R``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import run_script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    """Time both step variants and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side (after one warm-up step each)")
    parser.add_argument("--samples", type=int, default=1024, help="scenes in the shards")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--space", choices=("pixels", "vae"), default="pixels")
    parser.add_argument(
        "--throughput", default=None, help="a preset (DiT-B/4) to time alone first, on the GPU when there is one"
    )
    parser.add_argument("--throughput-batch", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, for MFU")
    args = parser.parse_args()
    if args.throughput:
        preset_throughput(args.throughput, args.throughput_batch, args.steps, args.peak_tflops)

    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import EMAModel

    from captiondata.builders.scenes import scene_records
    from captiondata.config import DataConfig, MixConfig
    from captiondata.loader import CaptionLoader
    from captiondata.writer import ShardWriter
    from train_dit.config import DitModelConfig, DitTrainConfig, ImageSpaceSpec
    from train_dit.diffusion import noisy_inputs, training_scheduler
    from train_dit.features import FeatureBatches, ensure_features, pixel_transform
    from train_dit.image import ImageSpace, tiny_vae_config
    from train_dit.model import build_transformer, parameter_count, predict
    from train_dit.text import TextEncoder, null_condition
    from train_dit.train import Session, prepare_batch, sample_generators
    from training.distributed import DistEnv

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    folder = tempfile.mkdtemp(prefix="dit-bench-")
    writer = ShardWriter(f"{folder}/shards", "train", max_count=256)
    writer.write_all(list(scene_records("train", args.samples)))
    writer.close()
    data = DataConfig(builder="none", train_shards=f"{folder}/shards/train-*.tar", num_workers=0, shuffle_buffer=256)
    mix = MixConfig(p=0.5)
    if args.space == "vae":
        model_cfg = DitModelConfig(
            image_size=64, patch_size=1, image_space=ImageSpaceSpec(kind="vae", config=tiny_vae_config())
        )
    else:
        model_cfg = DitModelConfig()
    train_cfg = DitTrainConfig(batch_size=args.batch, device="cpu")
    env = DistEnv()
    text, space = TextEncoder(model_cfg.text_encoder), ImageSpace(model_cfg.image_space)
    started = time.perf_counter()
    store = ensure_features(data, mix, text, space, model_cfg.image_size, True, f"{folder}/cache", 64)
    build_s = time.perf_counter() - started
    session = Session(model_cfg, train_cfg, data, mix, folder, env, text=text, space=space, null=null_condition(text))
    latent = space.latent_size(model_cfg.image_size)
    model = build_transformer(model_cfg, space.channels, latent, text.dim)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, power=0.75)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    scheduler = training_scheduler(train_cfg)
    cached = iter(
        FeatureBatches(
            CaptionLoader(data, mix, tokenize=None, batch_size=args.batch, image_features=store.images, num_workers=0),
            store,
        ).iterate()
    )
    on_the_fly = iter(
        CaptionLoader(
            data,
            mix,
            image_transform=pixel_transform(model_cfg.image_size),
            tokenize=None,
            batch_size=args.batch,
            num_workers=0,
        ).iterate()
    )

    def step(source, number: int) -> float:
        """One training step from ``source``; seconds."""
        began = time.perf_counter()
        batch = next(source)
        generators = sample_generators(0, number, list(batch["key"]))
        x0, features, mask = prepare_batch(session, batch, generators)
        x_t, timesteps, target = noisy_inputs(scheduler, train_cfg, x0, generators)
        loss = F.mse_loss(predict(model, x_t, timesteps, features, mask), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.step(model.parameters())
        return time.perf_counter() - began

    times = {"cached": [], "fly": []}
    for number in range(args.steps + 1):
        for name, source in (("cached", cached), ("fly", on_the_fly)):
            elapsed = step(source, number)
            if number > 0:
                times[name].append(elapsed)
    cached_rate = args.batch / statistics.median(times["cached"])
    fly_rate = args.batch / statistics.median(times["fly"])
    print(
        f"model {model_cfg.name}: {parameter_count(model)} parameters, {space.channels}x{latent}x{latent} x0 "
        f"({args.space}, {model_cfg.image_size} px), {(latent // model_cfg.resolved_patch) ** 2} tokens, text MiniLM-L6 (384 d), "
        f"batch {args.batch}, {args.threads} threads, {args.steps} timed steps per side"
    )
    print(
        f"feature cache: {len(store.images.keys)} images, {len(store.index)} texts, {store.nbytes() / 1e6:.1f} MB "
        f"({store.nbytes() / len(store.images.keys) / 1e3:.1f} kB per image, {store.nbytes() / len(store.images.keys) * 1e6 / 1e9:.1f} GB "
        f"per million images), built in {build_s:.1f} s ({len(store.images.keys) / build_s:.1f} images/s)"
    )
    print(
        f"dit: cached {cached_rate:.1f} samples/s vs on-the-fly {fly_rate:.1f} samples/s, ratio {cached_rate / fly_rate:.2f}"
    )


def forward_flops(depth: int, width: int, tokens: int, text_tokens: int, text_dim: int, patch_dim: int) -> float:
    """Forward FLOPs of one sample through a PixArt DiT (2 per multiply-add): per block self-attention (QKV + out:
    4 N w^2, scores and mixing: 2 N^2 w), cross-attention (Q, out: 2 N w^2; K, V over the text: 2 L w^2; scores and
    mixing: 2 N L w), MLP (8 N w^2); plus the caption projection (L d w + L w^2), patch embedding and output."""
    n, w, length = tokens, width, text_tokens
    block = 4 * n * w * w + 2 * n * n * w + 2 * n * w * w + 2 * length * w * w + 2 * n * length * w + 8 * n * w * w
    return 2.0 * (depth * block + length * text_dim * w + length * w * w + 2 * n * patch_dim * w)


def preset_throughput(preset: str, batch: int, steps: int, peak_tflops: float | None) -> None:
    """Samples/s (and MFU) of the bare training step of ``preset`` at 256 px in SD-VAE latents."""
    import torch
    import torch.nn.functional as F

    from train_dit.config import DitModelConfig
    from train_dit.model import build_transformer, parameter_count, predict

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cfg = DitModelConfig(preset=preset, image_size=32)  # 32x32x4 latents of a 256 px image (the VAE is not needed here)
    model = build_transformer(cfg, 4, 32, 768).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    x = torch.randn(batch, 4, 32, 32, device=device)
    text, mask = torch.randn(batch, 77, 768, device=device), torch.ones(batch, 77, device=device)
    t = torch.randint(0, 1000, (batch,), device=device).float()
    times = []
    for step in range(steps + 1):
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.mse_loss(predict(model, x, t, text, mask).float(), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - began)
    rate = batch / statistics.median(times)
    tokens = (32 // cfg.resolved_patch) ** 2
    flops = 3 * forward_flops(cfg.resolved_depth, cfg.resolved_width, tokens, 77, 768, 4 * cfg.resolved_patch**2)
    mfu = f", MFU {rate * flops / (peak_tflops * 1e12):.1%} of {peak_tflops:g} TFLOP/s" if peak_tflops else ""
    print(
        f"{preset}: {parameter_count(model) / 1e6:.1f}M parameters, {tokens} tokens, batch {batch}, "
        f"{'bf16 autocast on ' + torch.cuda.get_device_name() if cuda else 'fp32 on CPU'}: {rate:.1f} samples/s, "
        f"{rate * flops / 1e12:.2f} TFLOP/s{mfu}"
    )


if __name__ == "__main__":
    run_script(main)
