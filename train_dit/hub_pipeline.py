"""``RecapDiTPipeline``: a recap-harness DiT export as a diffusers pipeline (this file is shipped in every export as
``pipeline.py``; it imports only torch and diffusers, so it runs without the harness installed).

Load it with one line of plain diffusers (``model_index.json`` names ``["pipeline", "RecapDiTPipeline"]``; diffusers
loads a pipeline file found in the folder as it loads a Hub repository's community pipeline, hence
``trust_remote_code``)::

    pipe = DiffusionPipeline.from_pretrained(EXPORT, trust_remote_code=True)
    image = pipe("a red circle on a blue square").images[0]

Why a class of our own and not ``PixArtAlphaPipeline`` (whose transformer this is): a pixel-space export has no
autoencoder (``vae=None``; PixArt decodes with ``self.vae`` unconditionally and sizes images as ``sample_size`` x 8),
the text encoder is a BERT-style encoder (MiniLM) read through its ``last_hidden_state`` rather than T5, and flow
exports may predict x0 (JiT), which is stepped through its exact velocity; none of diffusers' pipelines does these.

Components: ``transformer`` (``PixArtTransformer2DModel``), ``scheduler`` (the SAMPLING scheduler with the settings
the harness samples with: in pixel space DDPM's ``clip_sample`` or DPM-Solver++'s ``thresholding`` at 1.0),
``vae`` (None in pixel space), ``text_encoder`` + ``tokenizer`` (Hugging Face; None for open_clip text towers, then
pass ``prompt_embeds``/``prompt_attention_mask`` and the negative pair yourself).

Sampling is the harness's (``train_dit.sample.DitPipeline.generate``): each prompt is encoded alone and zero-padded
to ``max_sequence_length`` with its mask; the unconditional branch is the negative prompt's features (default the
empty caption, as in training's caption dropout); guidance uncond + s (cond - uncond) whenever s != 1; image i's
initial noise and every later noise draw come from ``generator[i]`` (pass a list, one per image, for per-image
seeds); ``batch_invariant=True`` runs the transformer on each prompt's [uncond, cond] pair alone, so an image does
not depend on the batch it is in. Output images are in [0, 1].
"""

from __future__ import annotations

import inspect
from typing import Any, List, Optional, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from PIL import Image

NO_SIZE_CONDITIONS = {"resolution": None, "aspect_ratio": None}


class RecapDiTPipeline(DiffusionPipeline):
    """Text-to-image sampling of a recap-harness DiT (see the module docstring).

    ``prediction``: what the transformer outputs (``epsilon``, ``velocity`` or ``sample`` = x0); ``scaling_factor``:
    latents = autoencoder latents x it (None = the VAE config's); ``max_sequence_length``: text tokens kept and padded
    to; ``default_num_inference_steps`` / ``default_guidance_scale``: the harness's sample settings of the run.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]

    def __init__(
        self,
        transformer: Any,
        scheduler: Any,
        vae: Any = None,
        text_encoder: Any = None,
        tokenizer: Any = None,
        prediction: str = "epsilon",
        scaling_factor: Optional[float] = None,
        max_sequence_length: int = 77,
        default_num_inference_steps: int = 250,
        default_guidance_scale: float = 10.0,
    ) -> None:
        super().__init__()
        self.register_modules(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer
        )
        self.register_to_config(
            prediction=prediction,
            scaling_factor=scaling_factor,
            max_sequence_length=max_sequence_length,
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale,
        )

    @torch.no_grad()
    def encode_prompt(self, prompts: List[str]) -> tuple:
        """(features [B, max_sequence_length, D] float32, mask [B, max_sequence_length] int64): each prompt encoded
        alone (no batch padding), truncated to ``max_sequence_length`` tokens, zero-padded after its last token."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                "this export has no text_encoder/tokenizer (an open_clip text tower): pass prompt_embeds and "
                "prompt_attention_mask (and the negative pair)"
            )
        length, device = int(self.config.max_sequence_length), self.transformer.device
        rows = []
        for prompt in prompts:
            batch = self.tokenizer([prompt], padding=True, truncation=True, max_length=length, return_tensors="pt")
            batch = {k: v.to(self.text_encoder.device) for k, v in batch.items()}
            rows.append(self.text_encoder(**batch).last_hidden_state[0].float().to(device))
        features = rows[0].new_zeros((len(rows), length, rows[0].shape[-1]))
        mask = torch.zeros((len(rows), length), dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            features[i, : row.shape[0]], mask[i, : row.shape[0]] = row, 1
        return features, mask

    def _model_timestep(self, index: int, t: Any) -> float:
        """1000 sigma for DPM-Solver++ on flow sigmas (its integer ``timesteps`` round sigma down), else ``t``."""
        if getattr(self.scheduler.config, "use_flow_sigmas", False):
            return float(self.scheduler.sigmas[index]) * self.scheduler.config.num_train_timesteps
        return float(t)

    def _predict(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        mask: torch.Tensor,
        half: int,
        batch_invariant: bool,
    ) -> torch.Tensor:
        """The transformer's output for the batch, or one prompt's [uncond, cond] rows at a time."""

        def run(rows: Any) -> torch.Tensor:
            return self.transformer(
                x[rows],
                encoder_hidden_states=text[rows],
                timestep=timesteps[rows],
                encoder_attention_mask=mask[rows],
                added_cond_kwargs=NO_SIZE_CONDITIONS,
                return_dict=False,
            )[0].float()

        if not batch_invariant:
            return run(slice(None))
        count = half or x.shape[0]
        outs = [run([i, i + half] if half else [i]) for i in range(count)]
        if not half:
            return torch.cat(outs)
        return torch.cat([torch.cat([o[:1] for o in outs]), torch.cat([o[1:] for o in outs])])

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str], None] = None,
        negative_prompt: str = "",
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        prompt_attention_mask: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_attention_mask: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        batch_invariant: bool = True,
    ) -> Any:
        """Generate one image per prompt: ``images`` is a list of PIL images (``output_type="pil"``), [N, H, W, 3]
        numpy (``np``) or [N, 3, H, W] torch (``pt``) in [0, 1], or the final latents (``latent``). Raises
        ValueError for a bad output_type, a generator list of the wrong length or missing text embeddings."""
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type={output_type!r}; choose pil, np, pt or latent")
        steps = int(num_inference_steps or self.config.default_num_inference_steps)
        scale = float(self.config.default_guidance_scale if guidance_scale is None else guidance_scale)
        device = self.transformer.device
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
            prompt_embeds, prompt_attention_mask = self.encode_prompt(prompts)
        n = prompt_embeds.shape[0]
        guided = scale != 1.0
        if guided and negative_prompt_embeds is None:
            negative_prompt_embeds, negative_prompt_attention_mask = self.encode_prompt([negative_prompt])
        if guided:
            negative_prompt_embeds = (
                negative_prompt_embeds.expand(n, -1, -1)
                if negative_prompt_embeds.shape[0] == 1
                else negative_prompt_embeds
            )
            negative_prompt_attention_mask = (
                negative_prompt_attention_mask.expand(n, -1)
                if negative_prompt_attention_mask.shape[0] == 1
                else negative_prompt_attention_mask
            )
            text = torch.cat([negative_prompt_embeds, prompt_embeds]).to(device)
            mask = torch.cat([negative_prompt_attention_mask, prompt_attention_mask]).to(device)
        else:
            text, mask = prompt_embeds.to(device), prompt_attention_mask.to(device)
        generators = generator if isinstance(generator, list) else None
        if generators is not None and len(generators) != n:
            raise ValueError(f"{len(generators)} generators for {n} prompts; pass one per prompt")
        cfg = self.transformer.config
        shape = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))
        if generators is not None:
            x = torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generators]).to(device)
        else:
            x = torch.randn(
                (n, *shape), generator=generator, device=generator.device if generator is not None else "cpu"
            ).to(device)
        self.scheduler.set_timesteps(steps, device=device)
        x = x * getattr(self.scheduler, "init_noise_sigma", 1.0)
        step_kwargs = (
            {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        )
        train_steps = self.scheduler.config.num_train_timesteps
        for index, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_in = torch.cat([x, x]) if guided else x
            if hasattr(
                self.scheduler, "scale_model_input"
            ):  # DDPM / DPM-Solver (identity there); flow matching has none
                model_in = self.scheduler.scale_model_input(model_in, t)
            timesteps = torch.full((model_in.shape[0],), self._model_timestep(index, t), device=device)
            out = self._predict(model_in, timesteps, text, mask, n if guided else 0, batch_invariant)
            if guided:
                uncond, cond = out.chunk(2)
                out = uncond + scale * (cond - uncond)
            if self.config.prediction == "sample":  # x0 -> the velocity whose x0 estimate x_t - sigma v it is
                sigma = (timesteps[:n] / train_steps).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
                out = (x - out) / sigma
            x = self.scheduler.step(out, t, x, **step_kwargs, return_dict=False)[0]
        if output_type == "latent":
            images: Any = x
        else:
            images = self.decode(x)
            if output_type != "pt":
                images = images.permute(0, 2, 3, 1).numpy()
                if output_type == "pil":
                    images = [Image.fromarray(np.round(im * 255).astype(np.uint8), "RGB") for im in images]
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] (CPU float32) of x0 [N, C, S, S]: pixels, or VAE-decoded latents / factor."""
        x0 = x0.float()
        if self.vae is not None:
            factor = (
                self.config.scaling_factor if self.config.scaling_factor is not None else self.vae.config.scaling_factor
            )
            x0 = self.vae.decode(x0.to(self.vae.dtype) / factor).sample.float()
        return ((x0.clamp(-1, 1) + 1.0) / 2.0).cpu()
