"""Held-out denoising error while a DiT trains: how far the EMA model's clean-image estimate lands from the truth on
fixed validation samples at fixed noise levels, per caption source.

The training loss mixes every noise level and every caption draw, so it moves little and says little about samples;
a validation loss on held-out data at fixed noise levels does track them (SD3: Esser et al. 2024, "Scaling Rectified
Flow Transformers for High-Resolution Image Synthesis", which "correlates lower validation loss to improved
text-to-image synthesis"). It is reported here in the image space's own units, comparable across objectives: the
mean squared error of the x0 estimate, x0 itself for ``prediction="sample"``, x_t - sigma v for a velocity model and
(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) for an epsilon model. Level l in (0, 1) is sigma = l for flow and
timestep round(l (T - 1)) for DDPM; an epsilon model's x0 error is its epsilon error times (1 - abar) / abar, which
grows without bound at high noise: the reason an undertrained epsilon model samples noise in pixel space
(``results/dit_scenes.md``), so read its high levels as that, not as a bug. Per caption source (``original``, ``recap`` = the first recaption), so a run
trained on alt-text only can be seen failing on recaptions. Every draw comes from its own generators and the
trained weights are restored bit for bit afterwards, so validating does not change the run (resume stays bitwise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from captiondata.config import DataConfig
from captiondata.reader import iter_samples
from harness_infra.errors import ConfigError, cli_main
from train_dit.config import DitTrainConfig
from train_dit.features import pixel_transform
from train_dit.image import to_model_range
from train_dit.model import predict
from train_dit.text import null_condition, pad_features, unpad_features

log = logging.getLogger(__name__)
VALIDATION_SEED = 20_240_917  # the noise of the held-out samples: one draw for the whole run


@dataclass
class HeldOut:
    """Fixed validation inputs: x0 [N, C, S, S], noise like x0, and per caption source (text [N, L, D], mask [N, L])."""

    x0: torch.Tensor
    noise: torch.Tensor
    texts: Dict[str, Any]


def held_out(data_cfg: Optional[DataConfig], image_size: int, space: Any, text: Any, n: int) -> HeldOut:
    """The first ``n`` valid samples of the data's ``val`` split at ``image_size`` px, encoded by the run's image space
    (``train_dit.image.ImageSpace``) and text encoder (``train_dit.text.TextEncoder``), on the space's device. Raises
    ConfigError (one line) when the data has no val split or it has no valid sample."""
    try:
        spec = data_cfg.shards("val") if data_cfg is not None else None
    except ConfigError as exc:
        raise ConfigError(
            f"train.val_every_steps > 0 needs a val split ({exc}); set train.val_every_steps=0 to train without it"
        ) from None
    if not spec:
        raise ConfigError(
            "train.val_every_steps > 0 needs a val split (data.val_shards); set train.val_every_steps=0 to train without it"
        )
    transform = pixel_transform(image_size)
    images: List[torch.Tensor] = []
    captions: Dict[str, List[str]] = {"original": [], "recap": []}
    for record in iter_samples(
        spec, data_cfg.layout, max_image_pixels=data_cfg.max_image_pixels, exif_transpose=data_cfg.exif_transpose
    ):
        images.append(transform(record.image))
        captions["original"].append(record.original or "")
        captions["recap"].append(record.recaptions[0] if record.recaptions else "")
        if len(images) == n:
            break
    if not images:
        raise ConfigError(f"train.val_every_steps > 0: the val split ({spec}) has no valid samples")
    with torch.no_grad():
        x0 = space.encode(to_model_range(torch.stack(images)).to(space.device)).float()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(VALIDATION_SEED)).to(x0.device)
    texts: Dict[str, Any] = {}
    for source, lines in captions.items():
        if all(lines):  # a source every sample has (scenes and Flickr8k have both; raw web shards may lack recaptions)
            rows = [row for line in lines for row in unpad_features(*text.encode([line]))]
            features, mask = pad_features(rows)
            texts[source] = (features.to(x0.device), mask.to(x0.device))
    log.info("validation: %d held-out samples, caption sources %s", x0.shape[0], ", ".join(texts) or "none")
    return HeldOut(x0, noise, texts)


def with_text_controls(held: HeldOut, text: Any) -> HeldOut:
    """``held`` plus the controls that say whether a model uses its text, as extra caption sources: ``empty`` (every
    sample given the empty caption's features, the null condition of caption dropout and guidance: ``null_condition``)
    and, per caption source, ``{source}_other`` (sample i given sample i+1's caption, the last the first's: nobody
    keeps their own). ``denoising_errors`` then reports "empty", "{source}_other" and their "@level" values, in the
    same units (mean squared x0 error in the image space's units). A model whose error with its own captions is no
    lower than with these draws from its prior (``results/dit_scenes.md``: the alt-text-only DiT, about 1% apart).
    Needs two samples or more (ConfigError otherwise)."""
    n = held.x0.shape[0]
    if n < 2:
        raise ConfigError(f"text controls need at least 2 held-out samples to swap captions, got {n}")
    texts = dict(held.texts)
    for source, (features, mask) in held.texts.items():
        other = torch.roll(torch.arange(n, device=features.device), -1)
        texts[f"{source}_other"] = (features[other], mask[other])
    empty, empty_mask = pad_features([null_condition(text)[0]] * n)
    texts["empty"] = (empty.to(held.x0.device), empty_mask.to(held.x0.device))
    return HeldOut(held.x0, held.noise, texts)


def x0_estimate(
    cfg: DitTrainConfig, scheduler: Any, output: torch.Tensor, x_t: torch.Tensor, level: float, t: float
) -> torch.Tensor:
    """The clean-image estimate of a model ``output`` at ``x_t`` (see the module docstring for each objective)."""
    if cfg.scheduler == "flow":
        return output if cfg.resolved_prediction == "sample" else x_t - level * output
    abar = scheduler.alphas_cumprod[int(t)].to(x_t.device, x_t.dtype)
    return (x_t - (1 - abar).sqrt() * output) / abar.sqrt()


@torch.no_grad()
def denoising_errors(
    model: torch.nn.Module, held: HeldOut, cfg: DitTrainConfig, scheduler: Any, batch_size: int = 64
) -> Dict[str, float]:
    """{"{source}@{level}": mean squared x0 error} of ``model`` over the held-out samples, and "{source}" = the mean
    over ``cfg.val_levels``; the model is put in eval mode meanwhile and back in its training mode after."""
    was_training = model.training
    model.eval()
    out: Dict[str, float] = {}
    try:
        for source, (text, mask) in held.texts.items():
            per_level = []
            for level in cfg.val_levels:
                if cfg.scheduler == "flow":
                    t = level * cfg.num_train_timesteps
                    x_t = (1 - level) * held.x0 + level * held.noise
                else:
                    t = float(round(level * (cfg.num_train_timesteps - 1)))
                    x_t = scheduler.add_noise(
                        held.x0,
                        held.noise,
                        torch.full((held.x0.shape[0],), int(t), dtype=torch.long, device=held.x0.device),
                    )
                errors = []
                for start in range(0, held.x0.shape[0], batch_size):
                    rows = slice(start, start + batch_size)
                    timesteps = torch.full((x_t[rows].shape[0],), t, device=x_t.device)
                    output = predict(model, x_t[rows], timesteps, text[rows], mask[rows]).float()
                    estimate = x0_estimate(cfg, scheduler, output, x_t[rows], level, t)
                    errors.append((estimate - held.x0[rows]).pow(2).flatten(1).mean(1))
                out[f"{source}@{level:g}"] = float(torch.cat(errors).mean())
                per_level.append(out[f"{source}@{level:g}"])
            out[source] = sum(per_level) / len(per_level)
    finally:
        model.train(was_training)
    return out


def export_errors(
    export_dir: str, data_cfg: DataConfig, n: int, levels: List[float], controls: bool = False
) -> Dict[str, float]:
    """``denoising_errors`` of an export's transformer (its EMA weights) on the first ``n`` samples of
    ``data_cfg``'s val split, with the export's own text encoder, image space, objective and prediction:
    {"{source}@{level}": mean squared x0 error, "{source}": its mean over ``levels``} for source original and recap;
    with ``controls``, also "empty" and "{source}_other" (``with_text_controls``)."""
    from diffusers import DDPMScheduler

    from train_dit.config import SAMPLERS_OF, SampleSpec
    from train_dit.diffusion import is_flow
    from train_dit.sample import DitPipeline

    pipe = DitPipeline.from_pretrained(export_dir)
    described, flow = pipe.description, is_flow(pipe.scheduler_config)
    objective = "flow" if flow else "ddpm"
    cfg = DitTrainConfig(
        scheduler=objective,
        prediction=described.get("prediction"),
        val_levels=list(levels),
        num_train_timesteps=int(pipe.scheduler_config.get("num_train_timesteps", 1000)),
        sample=SampleSpec(sampler=SAMPLERS_OF[objective][0]),
    )
    scheduler = None if flow else DDPMScheduler.from_config(pipe.scheduler_config)
    held = held_out(data_cfg, int(described["image_size"]), pipe.space, pipe.text, n)
    if controls:
        held = with_text_controls(held, pipe.text)
    return denoising_errors(pipe.transformer, held, cfg, scheduler)


def main(argv: Optional[List[str]] = None) -> None:
    """CLI: ``python -m train_dit.validation EXPORT [EXPORT ...] --val-shards SPEC [--samples 64] [--levels ...]
    [--controls]`` prints one line per export: the x0 error per caption source and level (the numbers
    ``validation.jsonl`` holds for a run's last step, here for any export, e.g. to compare recipes); ``--controls``
    adds the errors with the empty caption and with another sample's caption (does the model use its text?)."""
    import argparse

    parser = argparse.ArgumentParser(description="Held-out x0 errors of DiT exports (train_dit.validation).")
    parser.add_argument("exports", nargs="+", help="export folders (train/.../export)")
    parser.add_argument(
        "--val-shards",
        required=True,
        help="shard spec of the held-out split, e.g. cache/runs/data/scenes-HASH/val-*.tar",
    )
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--controls",
        action="store_true",
        help="also the errors with the empty caption (empty) and with the next "
        "sample's caption (SOURCE_other): a model that uses its text does worse with them",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data_cfg = DataConfig(builder="none", train_shards=args.val_shards, val_shards=args.val_shards)
    for export_dir in args.exports:
        errors = export_errors(export_dir, data_cfg, args.samples, args.levels, args.controls)
        print(export_dir, " ".join(f"{name} {value:.4f}" for name, value in errors.items()), flush=True)


if __name__ == "__main__":
    cli_main(main)
