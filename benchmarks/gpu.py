"""The GPU numbers in one process: CLIP and DiT training steps (samples/s and MFU), DiT sampling and the evaluation's
image forward (images/s), each against the matrix-multiply peak measured in the same process at the same precision.

    python benchmarks/gpu.py                    # on a GPU: ViT-B/16 CLIP at ctx 128, DiT-B/4, bf16 autocast
    python benchmarks/gpu.py --device cpu --tiny  # the same code on small models, fp32 (what CI and a laptop can run)

benchmarks/gpu.sh wraps it for a lent GPU machine (installs the carried wheels it lacks, then runs this).

- peak: a square matmul (8192 on CUDA, 1024 on CPU) in the step's precision, median of timed repeats: FLOP/s =
  2 n^3 / seconds. MFU = (FLOPs of one step, counted by ``torch.utils.flop_counter.FlopCounterMode`` over the real
  forward and backward) x steps/s / that peak. The optimizer's element-wise work is not counted (it is not matmul).
- CLIP step: open_clip ``ViT-B-16`` (``--tiny``: ``RecapCLIP-nano``, the harness's registered CPU model) with a
  128-token text context, open_clip's ``ClipLoss``, AdamW; batch ``--clip-batch``.
- DiT step: ``train_dit.model.build_transformer`` (diffusers' PixArt transformer) of ``DiT-B/4`` on 32x32x4 latents
  (a 256 px image in SD-VAE latents; ``--tiny``: ``DiT-micro``), 77 text tokens of width 768, MSE on the output, AdamW.
- DiT sampling: DPM-Solver++ (diffusers' ``DPMSolverMultistepScheduler``), 25 steps with classifier-free guidance
  (two forwards per step, batched), images/s.
- Evaluation at the bound: the CLIP image tower's forward alone (``encode_image`` under ``inference_mode``) on
  preprocessed tensors, images/s: what the evaluation cannot beat (no decoding, no I/O).

Every line prints the device's name, so numbers from different cards are never mixed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, Tuple

from _common import run_script


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def matmul_peak(device, dtype, n: int, repeats: int) -> float:
    """FLOP/s of an n x n x n matmul in ``dtype`` on ``device`` (median of ``repeats``)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2.0 * n**3 / timed(lambda: a @ b, device, repeats, warmup=3)


def step_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (forward and backward), counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def training_step(forward_backward: Callable[[], None], optimizer, device, repeats: int) -> Tuple[int, float]:
    """(FLOPs of one forward and backward, median seconds of a whole step: zero_grad, forward, backward, step)."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_backward()
        optimizer.step()

    return step_flops(forward_backward), timed(step, device, repeats)


def clip_benchmark(args, device, autocast) -> Dict[str, float]:
    """Samples/s and FLOPs per step of the CLIP training step, and images/s of the image tower's forward."""
    from pathlib import Path

    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    # the harness's RecapCLIP-* configs beside open_clip's own (train_clip.models registers the same folder; read
    # directly here so the GPU machine needs no more than open_clip and diffusers)
    open_clip.add_model_config(Path(__file__).resolve().parent.parent / "train_clip" / "model_configs")
    name = "RecapCLIP-nano" if args.tiny else "ViT-B-16"
    config = open_clip.get_model_config(name)
    config["text_cfg"]["context_length"] = 128
    model = open_clip.CLIP(**config).to(device)
    size = model.visual.image_size if isinstance(model.visual.image_size, int) else model.visual.image_size[0]
    context = model.context_length
    batch = args.clip_batch
    images = torch.randn(batch, 3, size, size, device=device)
    texts = torch.randint(1, 1000, (batch, context), device=device)
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forward_backward() -> None:
        with autocast():
            image_features, text_features, scale = model(images, texts)[:3]
            loss = loss_fn(image_features, text_features, scale)
        loss.backward()

    flops, seconds = training_step(forward_backward, optimizer, device, args.repeats)
    model.eval()

    @torch.inference_mode()
    def image_forward() -> None:
        with autocast():
            model.encode_image(images)

    image_seconds = timed(image_forward, device, args.repeats)
    return {
        "name": name,
        "context": context,
        "size": size,
        "rate": batch / seconds,
        "flops": flops,
        "seconds": seconds,
        "images_per_s": batch / image_seconds,
    }


def dit_benchmark(args, device, autocast) -> Dict[str, float]:
    """Samples/s and FLOPs per step of the DiT training step, and images/s of DPM-Solver++ sampling."""
    import torch
    import torch.nn.functional as F
    from diffusers import DPMSolverMultistepScheduler

    from train_dit.config import DitModelConfig
    from train_dit.model import build_transformer, predict

    preset = "DiT-micro" if args.tiny else "DiT-B/4"
    cfg = DitModelConfig(preset=preset, image_size=32)
    model = build_transformer(cfg, 4, 32, 768).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    batch = args.dit_batch
    x = torch.randn(batch, 4, 32, 32, device=device)
    text, mask = torch.randn(batch, 77, 768, device=device), torch.ones(batch, 77, device=device)
    t = torch.randint(0, 1000, (batch,), device=device).float()

    def forward_backward() -> None:
        with autocast():
            loss = F.mse_loss(predict(model, x, t, text, mask).float(), x)
        loss.backward()

    flops, seconds = training_step(forward_backward, optimizer, device, args.repeats)
    model.eval()
    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++")
    n = args.sample_batch
    cond = torch.randn(n, 77, 768, device=device)
    both, both_mask = torch.cat([cond, torch.zeros_like(cond)]), torch.ones(2 * n, 77, device=device)

    @torch.inference_mode()
    def sample() -> None:
        scheduler.set_timesteps(args.sample_steps)
        latents = torch.randn(n, 4, 32, 32, device=device)
        for step_t in scheduler.timesteps:
            with autocast():
                out = predict(
                    model, torch.cat([latents, latents]), step_t.expand(2 * n).float().to(device), both, both_mask
                )
            out = out.float()[:, :4]
            guided = out[n:] + 4.0 * (out[:n] - out[n:])
            latents = scheduler.step(guided, step_t, latents).prev_sample

    sample_seconds = timed(sample, device, max(1, args.repeats // 4), warmup=1)
    return {
        "name": preset,
        "rate": batch / seconds,
        "flops": flops,
        "seconds": seconds,
        "images_per_s": n / sample_seconds,
    }


def main() -> None:
    import contextlib

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="small models (the CPU check of this script)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--clip-batch", type=int, default=None)
    parser.add_argument("--dit-batch", type=int, default=None)
    parser.add_argument("--sample-batch", type=int, default=None)
    parser.add_argument("--sample-steps", type=int, default=25)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.clip_batch = args.clip_batch or (256 if cuda else 16)
    args.dit_batch = args.dit_batch or (64 if cuda else 8)
    args.sample_batch = args.sample_batch or (64 if cuda else 4)
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    card = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    precision = "bf16 autocast" if cuda else "fp32"
    peak = matmul_peak(device, dtype, 8192 if cuda else 1024, args.repeats)
    print(f"device {card}; precision {precision}; measured matmul peak {peak / 1e12:.2f} TFLOP/s")
    clip = clip_benchmark(args, device, autocast)
    print(
        f"CLIP {clip['name']} step, ctx {clip['context']}, {clip['size']} px, batch {args.clip_batch}: "
        f"{clip['rate']:.1f} samples/s, {clip['flops'] / 1e9:.1f} GFLOP/step, "
        f"MFU {clip['flops'] / clip['seconds'] / peak:.1%} of the measured peak"
    )
    print(
        f"evaluation bound ({clip['name']} image forward, batch {args.clip_batch}): {clip['images_per_s']:.1f} images/s"
    )
    dit = dit_benchmark(args, device, autocast)
    print(
        f"DiT {dit['name']} step, 32x32x4 latents, batch {args.dit_batch}: {dit['rate']:.1f} samples/s, "
        f"{dit['flops'] / 1e9:.1f} GFLOP/step, MFU {dit['flops'] / dit['seconds'] / peak:.1%} of the measured peak"
    )
    print(
        f"DiT {dit['name']} sampling, DPM-Solver++ {args.sample_steps} steps with guidance, batch {args.sample_batch}: "
        f"{dit['images_per_s']:.2f} images/s"
    )


if __name__ == "__main__":
    run_script(main)
