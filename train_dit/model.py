"""The text-conditioned DiT: diffusers' ``PixArtTransformer2DModel`` built from a ``DitModelConfig``.

Shapes: input ``x`` [B, C, S, S] (C = 4 latent channels of the SD VAE at S = image_size / 8, or 3 RGB channels at
S = image_size in pixel space); it is cut into (S / patch)^2 tokens of width ``width`` (DiT-B/4 at 256 px: 32x32x4
latents -> 64 tokens x 768; DiT-L/2: 256 tokens x 1024; the tiny CPU config: 32x32x3 pixels / patch 4 -> 64 tokens x
256). Each block: self-attention over image tokens, cross-attention to the text tokens [B, L, D_text] (projected
from D_text to ``width`` by PixArt's caption projection; padding masked by the text attention mask [B, L]), MLP,
all modulated by adaLN-single from the timestep. Output [B, C, S, S]: the epsilon (ddpm) or velocity (flow)
prediction (no learned variance: ``out_channels`` = C).
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from diffusers import PixArtTransformer2DModel

from train_dit.config import DitModelConfig

NO_SIZE_CONDITIONS = {"resolution": None, "aspect_ratio": None}


def transformer_config(cfg: DitModelConfig, latent_channels: int, latent_size: int, text_dim: int) -> Dict[str, Any]:
    """The ``PixArtTransformer2DModel`` keyword arguments of ``cfg`` (stored in the export's config.json)."""
    width, heads = cfg.resolved_width, cfg.resolved_heads
    return {
        "num_attention_heads": heads,
        "attention_head_dim": width // heads,
        "in_channels": latent_channels,
        "out_channels": latent_channels,
        "num_layers": cfg.resolved_depth,
        "cross_attention_dim": width,
        "sample_size": latent_size,
        "patch_size": cfg.resolved_patch,
        "caption_channels": text_dim,
        "use_additional_conditions": False,
        "norm_type": "ada_norm_single",
        "num_embeds_ada_norm": 1000,
        "interpolation_scale": max(latent_size // 64, 1),
    }


def build_transformer(
    cfg: DitModelConfig, latent_channels: int, latent_size: int, text_dim: int, seed: int = 0
) -> PixArtTransformer2DModel:
    """A freshly initialised transformer (weights a function of ``seed``) for latents [B, latent_channels,
    latent_size, latent_size] and text features of width ``text_dim``; gradient checkpointing as configured."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PixArtTransformer2DModel(**transformer_config(cfg, latent_channels, latent_size, text_dim))
    if cfg.grad_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def predict(
    model: torch.nn.Module, x: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The model's prediction [B, C, S, S] for noisy ``x`` [B, C, S, S] at ``timesteps`` [B] (float, 0..1000) given
    text features [B, L, D] and their mask [B, L] (1 = token, 0 = padding)."""
    return model(
        x,
        encoder_hidden_states=text,
        timestep=timesteps,
        encoder_attention_mask=mask,
        added_cond_kwargs=NO_SIZE_CONDITIONS,
        return_dict=False,
    )[0]


def parameter_count(model: torch.nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
