"""Generate images from prompts with classifier-free guidance, from a DiT export; write them with their settings.

``DitPipeline.from_pretrained(export_dir)`` loads what ``train_dit.train.export`` wrote: ``transformer/`` (diffusers
``PixArtTransformer2DModel.from_pretrained``), ``train_scheduler/`` (the training scheduler's config; ``scheduler/``
in format-1 exports, where it was the training one), the text encoder and image space named in ``dit_pipeline.json``
(the autoencoder from ``vae/``). The same export loads in plain diffusers as ``train_dit.hub_pipeline.RecapDiTPipeline``
(``DiffusionPipeline.from_pretrained(export_dir, trust_remote_code=True)``), which samples the same images.
``generate(prompts, seeds, spec)`` samples one batch as a ``training.generation.GenerationSpec`` says (the one loop
over batches and seeds is ``training.generation.generate_batches``): image i starts from noise drawn by ``torch.Generator().manual_seed(seeds[i])`` and
every later draw of its sampler (DDPM's variance noise) comes from that generator too, so an image depends on its
prompt and seed only, not on the batch it is in or the rank that draws it (bitwise with ``spec.batch_invariant``,
the default, which runs the transformer one prompt at a time; ``False`` batches it, faster on a GPU, and results then
differ across batch sizes at float rounding, about 1e-6). Guidance: prediction = uncond + scale x
(cond - uncond), uncond = the null condition (the empty caption's features, as in training's caption dropout); an
x0-predicting export (``"prediction": "sample"``) is guided in x0 and stepped with its exact velocity (the two are
affine in each other at one x_t, so guiding either is the same).
``write_samples`` shards prompts over ranks (prompt i on rank i mod world size) and writes ``images/{i:05d}.png``
plus ``images/{i:05d}.json`` (prompt, seed, guidance scale, steps, sampler, batch_invariant, batch_size, export) with
``training.generation.write_image``, the writer the text-to-image evaluation uses too.
"""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from harness_infra.atomic import atomic_write, atomic_write_text
from harness_infra.errors import cli_main, require
from train_dit.config import PREDICTIONS_OF, ImageSpaceSpec, TextEncoderSpec
from train_dit.diffusion import is_flow, model_timestep, sampling_scheduler, velocity_from_sample
from train_dit.image import ImageSpace, to_unit_range
from train_dit.model import predict
from train_dit.text import TextEncoder, null_condition, pad_features, unpad_features
from training.generation import GenerationSpec, generate_batches, image_record, write_image

PIPELINE_FILE = "dit_pipeline.json"


@dataclass
class DitPipeline:
    """A trained DiT ready to sample: transformer, scheduler config, text encoder, image space, null condition
    (``generate`` samples one batch; see the module docstring)."""

    transformer: torch.nn.Module
    scheduler_config: Dict[str, Any]
    text: Any
    space: ImageSpace
    description: Dict[str, Any]
    device: torch.device

    @classmethod
    def from_pretrained(cls, export_dir: str, device: str = "cpu", transformer: str = "transformer") -> "DitPipeline":
        """Load an export (``transformer``: ``transformer`` = EMA weights, ``transformer_online`` = trained weights)."""
        from diffusers import PixArtTransformer2DModel

        with open(os.path.join(export_dir, PIPELINE_FILE), encoding="utf-8") as handle:
            description = json.load(handle)
        target = torch.device(device)
        model = PixArtTransformer2DModel.from_pretrained(os.path.join(export_dir, transformer)).to(target).eval()
        trained = (
            "train_scheduler" if os.path.isdir(os.path.join(export_dir, "train_scheduler")) else "scheduler"
        )  # format 1: scheduler/
        with open(os.path.join(export_dir, trained, "scheduler_config.json"), encoding="utf-8") as handle:
            scheduler_config = json.load(handle)
        objective = "flow" if is_flow(scheduler_config) else "ddpm"
        prediction = description.setdefault("prediction", PREDICTIONS_OF[objective][0])
        require(
            prediction in PREDICTIONS_OF[objective],
            f"{export_dir}: {PIPELINE_FILE} says prediction={prediction!r}, which does not fit "
            f"its {objective} scheduler; expected one of {', '.join(PREDICTIONS_OF[objective])}",
        )
        text = TextEncoder(TextEncoderSpec(**description["text_encoder"]), target)
        space_fields = {k: v for k, v in description["image_space"].items() if k in ImageSpaceSpec.__dataclass_fields__}
        if space_fields.get("path") == "vae" and not os.path.isabs(space_fields["path"]):
            space_fields["path"] = os.path.join(export_dir, "vae")
        space = ImageSpace(ImageSpaceSpec(**space_fields), target)
        return cls(model, scheduler_config, text, space, description, target)

    def latent_shape(self) -> List[int]:
        """[C, S, S] of x0."""
        return list(self.description["latent"])

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int], spec: GenerationSpec) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] of one batch: ``prompts`` with per-image ``seeds``, sampled with ``spec``'s
        guidance scale, steps, sampler and ``batch_invariant`` (its seed and batch size are the caller's loop's,
        ``training.generation.generate_batches``). ConfigError when the prompt and seed counts differ."""
        require(len(prompts) == len(seeds), f"{len(prompts)} prompts but {len(seeds)} seeds")
        if not prompts:
            return torch.zeros(0, 3, 1, 1)
        return self._generate_batch(list(prompts), list(seeds), spec)

    def _predict(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        mask: torch.Tensor,
        half: int,
        batch_invariant: bool,
    ) -> torch.Tensor:
        """The transformer's prediction for the whole batch, or (``batch_invariant``) one prompt at a time: CPU GEMMs
        round differently for different row counts (measured 6e-7 on a batch of 8 vs rows alone), so only a fixed
        per-prompt shape ([uncond, cond] of that prompt) makes an image independent of the batch it is generated in."""
        if not batch_invariant:
            return predict(self.transformer, x, timesteps, text, mask).float()
        count = half or x.shape[0]
        rows = [[i, i + half] if half else [i] for i in range(count)]
        outs = [predict(self.transformer, x[r], timesteps[r], text[r], mask[r]).float() for r in rows]
        if not half:
            return torch.cat(outs)
        return torch.cat([torch.cat([o[:1] for o in outs]), torch.cat([o[1:] for o in outs])])

    def _generate_batch(self, prompts: List[str], seeds: List[int], spec: GenerationSpec) -> torch.Tensor:
        """One batch of the reverse process with guidance."""
        scale, steps, sampler = spec.guidance_scale, spec.steps, spec.sampler
        scheduler = sampling_scheduler(self.scheduler_config, sampler, pixel_space=self.space.vae is None)
        scheduler.set_timesteps(steps, device=self.device)
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        x = torch.stack([torch.randn(self.latent_shape(), generator=g) for g in generators]).to(self.device)
        x = x * getattr(scheduler, "init_noise_sigma", 1.0)
        rows = [unpad_features(*self.text.encode([prompt]))[0] for prompt in prompts]  # alone: no batch padding
        null_rows = [null_condition(self.text)[0]] * len(prompts)
        guided = scale != 1.0
        text, mask = pad_features(null_rows + rows if guided else rows, length=self.text.spec.max_length)
        text, mask = text.to(self.device), mask.to(self.device)
        for index, t in enumerate(scheduler.timesteps):
            model_in = torch.cat([x, x]) if guided else x
            if hasattr(scheduler, "scale_model_input"):  # DDPM/DPM-Solver (identity there); flow matching has none
                model_in = scheduler.scale_model_input(model_in, t)
            timesteps = torch.full((model_in.shape[0],), model_timestep(scheduler, index, t), device=self.device)
            out = self._predict(model_in, timesteps, text, mask, len(prompts) if guided else 0, spec.batch_invariant)
            if guided:
                uncond, cond = out.chunk(2)
                out = uncond + scale * (cond - uncond)
            if self.description["prediction"] == "sample":
                out = velocity_from_sample(
                    out, x, timesteps[: x.shape[0]] / self.scheduler_config.get("num_train_timesteps", 1000), floor=0.0
                )
            x = (
                scheduler.step(out, t, x, generator=generators, return_dict=False)[0]
                if sampler == "ddpm"
                else scheduler.step(out, t, x, return_dict=False)[0]
            )
        return to_unit_range(self.space.decode(x)).cpu()


def write_samples(
    pipeline: DitPipeline,
    prompts: Sequence[str],
    out_dir: str,
    spec: GenerationSpec,
    rank: int = 0,
    world_size: int = 1,
    export_dir: Optional[str] = None,
) -> List[int]:
    """Generate this rank's share of ``prompts`` (indices rank, rank + world_size, ...; image i has seed
    ``spec.seed + i``) into ``out_dir/images``; returns the indices written. Each PNG and its JSON are written atomically."""
    mine = list(range(rank, len(prompts), world_size))
    folder = os.path.join(out_dir, "images")
    os.makedirs(folder, exist_ok=True)
    for chunk, images in generate_batches(pipeline.generate, prompts, spec, mine, "dit sampling", show=rank == 0):
        for index, image in zip(chunk, images):
            write_image(
                folder, image, image_record(index, prompts[index], spec, batch_size=spec.batch_size, export=export_dir)
            )
    return mine


def prompts_from_records(records: Iterable[Any], source: str, n: int) -> List[str]:
    """The first ``n`` prompts of caption ``records`` (``captiondata.records.Record``): each one's original caption,
    first recaption, or both in turn (``source``: ``original``, ``recap``, ``both``; ``SampleSpec.prompt_source``)."""
    prompts: List[str] = []
    for record in records:
        if source in ("original", "both") and record.original:
            prompts.append(record.original)
        if source in ("recap", "both") and record.recaptions:
            prompts.append(record.recaptions[0])
        if len(prompts) >= n:
            break
    return prompts[:n]


def write_grid(out_dir: str, prompts: Sequence[str], columns: int = 4) -> str:
    """Index the images ``write_samples`` wrote for ``prompts`` (``prompts.jsonl``) and draw ``grid.png`` with each
    prompt under its image; returns the grid's path."""
    folder = os.path.join(out_dir, "images")
    records = []
    for index in range(len(prompts)):
        with open(os.path.join(folder, f"{index:05d}.json"), encoding="utf-8") as handle:
            records.append(json.load(handle))
    atomic_write_text(os.path.join(out_dir, "prompts.jsonl"), "".join(json.dumps(r) + "\n" for r in records))
    images = [Image.open(os.path.join(folder, f"{i:05d}.png")).convert("RGB") for i in range(len(prompts))]
    grid = sample_grid(images, list(prompts), columns)
    grid_path = os.path.join(out_dir, "grid.png")
    atomic_write(grid_path, lambda handle: grid.save(handle, format="PNG"))
    return grid_path


def sample_grid(
    images: Sequence[Image.Image],
    captions: Sequence[str],
    columns: int = 4,
    cell: int = 128,
    text_lines: Optional[int] = None,
) -> Image.Image:
    """A grid of images (each scaled to ``cell`` px, nearest neighbour) with its caption wrapped under it: whole
    (``text_lines`` None: every row as tall as the longest caption needs), or cut at ``text_lines`` lines ending in
    '...'."""
    font = ImageFont.load_default()
    line_height, chars = 11, max(cell // 6, 8)
    wrapped = [textwrap.wrap(caption, chars) for caption in captions]
    if text_lines is not None:
        wrapped = [
            w if len(w) <= text_lines else w[: text_lines - 1] + [w[text_lines - 1][: chars - 3] + "..."]
            for w in wrapped
        ]
    longest = max((len(w) for w in wrapped), default=0)
    height = cell + longest * line_height + 6
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * (cell + 6), rows * height), "white")
    draw = ImageDraw.Draw(grid)
    for index, (image, lines) in enumerate(zip(images, wrapped)):
        x, y = (index % columns) * (cell + 6) + 3, (index // columns) * height + 3
        grid.paste(image.resize((cell, cell), Image.NEAREST), (x, y))
        for number, line in enumerate(lines):
            draw.text((x, y + cell + 2 + number * line_height), line, fill="black", font=font)
    return grid


def main(argv: Optional[List[str]] = None) -> None:
    """CLI: ``python -m train_dit.sample EXPORT --shards SPEC --out DIR`` samples any export with the prompts of a
    shard spec (e.g. a data stage's ``val-*.tar``) and writes ``DIR/images``, ``DIR/prompts.jsonl`` and
    ``DIR/grid.png``, as the pipeline's sample stage does; settings default to the export's ``sample_defaults``, then to
    ``training.generation.GenerationSpec``'s."""
    import argparse

    from captiondata.config import CaptionLayout
    from captiondata.reader import iter_samples

    parser = argparse.ArgumentParser(description="Sample a DiT export (train_dit.sample).")
    parser.add_argument("export")
    parser.add_argument("--shards", required=True, help="shard spec whose captions are the prompts")
    parser.add_argument("--out", required=True, help="output folder (must not exist: results are never overwritten)")
    for name, kind in (
        ("num-prompts", int),
        ("prompt-source", str),
        ("guidance-scale", float),
        ("steps", int),
        ("sampler", str),
        ("seed", int),
        ("batch-size", int),
    ):
        parser.add_argument(f"--{name}", type=kind, default=None, help="default: the export's sample_defaults")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    require(not os.path.exists(args.out), f"--out {args.out} exists; choose a new folder")
    pipeline = DitPipeline.from_pretrained(args.export)
    defaults = pipeline.description.get("sample_defaults", {})

    def value(name: str, fallback: Any) -> Any:
        """The command line's value, else the export's sample default, else ``fallback``."""
        return getattr(args, name) if getattr(args, name) is not None else defaults.get(name, fallback)

    prompts = prompts_from_records(
        iter_samples(args.shards, CaptionLayout()), value("prompt_source", "both"), value("num_prompts", 12)
    )
    require(bool(prompts), f"--shards {args.shards}: no captions to prompt with")
    fallback = GenerationSpec()
    spec = GenerationSpec(
        **{
            name: value(name, getattr(fallback, name))
            for name in ("guidance_scale", "steps", "sampler", "seed", "batch_size")
        },
        batch_invariant=bool(defaults.get("batch_invariant", fallback.batch_invariant)),
    )
    write_samples(pipeline, prompts, args.out, spec, export_dir=args.export)
    print(write_grid(args.out, prompts, int(defaults.get("grid_columns", 4))))


if __name__ == "__main__":
    cli_main(main)
