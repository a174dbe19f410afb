"""The image space diffusion runs in: pixels, or the latents of a diffusers autoencoder times its scaling factor.

``ImageSpace.encode(pixels)``: pixels [B, 3, H, W] in [-1, 1] -> x0 [B, C, S, S] (pixel space: the pixels
themselves, C = 3, S = H; ``AutoencoderKL``: the posterior mean (or a draw) x ``scaling_factor``, C = 4 and S = H / 8
for the SD VAE, whose factor is 0.18215; ``AutoencoderTiny``: its latents x its factor, 1.0 for TAESD).
``decode(x0)`` inverts it back to pixels in [-1, 1]. The autoencoder is frozen (eval mode, no gradients).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from harness_infra.errors import require
from harness_infra.identity import model_fingerprint
from train_dit.config import DitModelConfig, ImageSpaceSpec


class ImageSpace:
    """Pixels <-> diffusion space; ``channels`` and ``downsample`` give x0's shape for an image size."""

    def __init__(self, spec: ImageSpaceSpec, device: torch.device = torch.device("cpu"), seed: int = 0) -> None:
        self.spec, self.device = spec, device
        self.vae: Optional[torch.nn.Module] = None
        if spec.kind == "pixels":
            self.channels, self.downsample, self.scaling_factor = 3, 1, 1.0
            return
        from diffusers import AutoencoderKL, AutoencoderTiny

        cls = AutoencoderKL if spec.kind == "vae" else AutoencoderTiny
        if spec.config is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.vae = cls.from_config(dict(spec.config))
        else:
            kwargs = {"subfolder": spec.subfolder} if spec.subfolder else {}
            self.vae = cls.from_pretrained(spec.path, **kwargs)
        self.vae.eval().requires_grad_(False).to(device)
        config = self.vae.config
        self.channels = int(config.latent_channels)
        blocks = config.block_out_channels if spec.kind == "vae" else config.encoder_block_out_channels
        self.downsample = 2 ** (len(blocks) - 1)
        self.scaling_factor = float(spec.scaling_factor if spec.scaling_factor is not None else config.scaling_factor)

    def identity(self) -> str:
        """What the encoding depends on: kind, weights and scaling factor."""
        weights = model_fingerprint(self.vae) if self.vae is not None else "none"
        return f"{self.spec.kind}:{weights}:{self.scaling_factor}"

    def latent_size(self, image_size: int) -> int:
        """Side S of x0 for ``image_size`` px images."""
        return image_size // self.downsample

    def check(self, cfg: DitModelConfig) -> None:
        """One-line ConfigError unless the image size and patch fit this autoencoder."""
        size = self.latent_size(cfg.image_size)
        require(
            size * self.downsample == cfg.image_size,
            f"model.image_size={cfg.image_size} is not a multiple of the autoencoder's down-sampling {self.downsample}",
        )
        require(
            size % cfg.resolved_patch == 0,
            f"model.patch_size={cfg.resolved_patch} does not divide the {size}x{size} latent grid of model.image_size={cfg.image_size}",
        )

    @torch.no_grad()
    def encode(
        self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None, sample: bool = False
    ) -> torch.Tensor:
        """x0 [B, C, S, S] float32 of ``pixels`` [B, 3, H, W] in [-1, 1] (``sample``: a posterior draw, AutoencoderKL)."""
        pixels = pixels.to(self.device, torch.float32)
        if self.vae is None:
            return pixels
        if self.spec.kind == "tiny_vae":
            return self.vae.encode(pixels).latents.float() * self.scaling_factor
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.sample(generator=generator) if sample else posterior.mean
        return latents.float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] in [-1, 1] of x0 [B, C, S, S]."""
        x0 = x0.to(self.device, torch.float32)
        if self.vae is None:
            return x0.clamp(-1, 1)
        return self.vae.decode(x0 / self.scaling_factor).sample.float().clamp(-1, 1)


def tiny_vae_config() -> dict:
    """A small random-weight ``AutoencoderKL`` config (4 latent channels, 8x down-sampling like the SD VAE) for tests."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [8, 8, 8, 8],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "sample_size": 32,
        "scaling_factor": 0.18215,
    }


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> [-1, 1]."""
    return images * 2.0 - 1.0


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> [0, 1]."""
    return (images.clamp(-1, 1) + 1.0) / 2.0


def describe(space: Any) -> str:
    """One line naming the space (logs)."""
    return f"{space.spec.kind} ({space.channels} ch, /{space.downsample}, scale {space.scaling_factor:g})"
