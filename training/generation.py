"""How images are generated from prompts, shared by the DiT's sample stage (``train_dit.config.SampleSpec``) and the
text-to-image evaluation tasks (``evals.tasks.t2i``): one ``GenerationSpec`` with one set of defaults, one loop that
batches the prompts and seeds them, one writer of ``{i:05d}.png`` + ``{i:05d}.json``.

Seeds: image i (its index in the prompt list) starts from ``seed + i``, whatever the batch it lands in or the rank that
draws it. Defaults = the settings of the committed text-to-image tables (``results/scenes_t2i.md``): DPM-Solver++ 25
steps at guidance 4, which fits both training objectives (``train_dit.config.SAMPLERS_OF``). The paper samples with
DDPM 250 steps at guidance 10 (``conf/train/dit_paper.yaml`` says so explicitly).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from harness_infra.atomic import atomic_write, atomic_write_json
from harness_infra.errors import require
from harness_infra.progress import Progress

__all__ = ["SAMPLERS", "GenerationSpec", "generate_batches", "generation_of", "image_record", "to_pil", "write_image"]

SAMPLERS = ("ddpm", "dpm++", "euler")


@dataclass
class GenerationSpec:
    """The sampling settings an image depends on besides the model, its prompt and its index.

    ``guidance_scale``: classifier-free guidance, prediction = uncond + scale x (cond - uncond) (1 = no guidance; the
    paper: 10). ``steps``: sampler steps. ``sampler``: ``ddpm`` (the paper, 250 steps), ``dpm++`` (DPM-Solver++
    multistep, about 25 steps) or ``euler`` (flow matching's Euler sampler). ``seed``: image i uses ``seed + i``.
    ``batch_size``: prompts per generator call. ``batch_invariant``: the generator runs one prompt at a time, so an image
    is bitwise independent of ``batch_size`` (false: whole batches, faster on a GPU, equal up to float rounding ~1e-6).
    Raises ``ConfigError`` (one line naming the key) for an unknown sampler or a value out of range (``check(where)``
    names the config node: ``train.sample``, ``eval task NAME: generation``).
    """

    guidance_scale: float = 4.0
    steps: int = 25
    sampler: str = "dpm++"
    seed: int = 0
    batch_size: int = 16
    batch_invariant: bool = True

    def __post_init__(self) -> None:
        self.check("generation")

    def check(self, where: str) -> None:
        """Range checks with ``where`` as the key prefix of the messages."""
        require(
            self.sampler in SAMPLERS,
            f"{where}.sampler={self.sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}",
        )
        require(
            self.guidance_scale >= 0, f"{where}.guidance_scale={self.guidance_scale} must be >= 0 (1 = no guidance)"
        )
        require(self.steps > 0, f"{where}.steps={self.steps} must be positive")
        require(self.seed >= 0, f"{where}.seed={self.seed} must be >= 0")
        require(self.batch_size > 0, f"{where}.batch_size={self.batch_size} must be positive")


def generation_of(spec: GenerationSpec) -> GenerationSpec:
    """The plain ``GenerationSpec`` part of ``spec`` (a ``SampleSpec`` extends it with prompts and a grid)."""
    return GenerationSpec(**{f.name: getattr(spec, f.name) for f in fields(GenerationSpec)})


def generate_batches(
    generate: Callable[[List[str], List[int], GenerationSpec], Any],
    prompts: Sequence[str],
    spec: GenerationSpec,
    indices: Optional[Sequence[int]] = None,
    label: str = "generating",
    show: bool = True,
) -> Iterator[Tuple[List[int], Any]]:
    """The one generation loop: ``indices`` (default: all of ``prompts``) in batches of ``spec.batch_size``; yields
    (the batch's indices, ``generate(batch prompts, seeds, spec)``), seed of image i = ``spec.seed + i``. ``generate``
    returns N images (N x 3 x H x W floats in [0, 1], or PIL images) for one batch."""
    chosen = list(range(len(prompts))) if indices is None else list(indices)
    progress = Progress(label, total=len(chosen), unit="image", enabled=show)
    for start in range(0, len(chosen), spec.batch_size):
        chunk = chosen[start : start + spec.batch_size]
        images = generate([prompts[i] for i in chunk], [spec.seed + i for i in chunk], spec)
        yield chunk, images
        progress.update(len(chunk))
    progress.close()


def to_pil(image: Any) -> Any:
    """A generated image (3 x H x W float in [0, 1], or PIL) as an 8-bit RGB PIL image: round(255 x clamp(x, 0, 1))."""
    import torch  # here, not at import: configs import this module, and composing a config loads no model library
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def image_record(index: int, prompt: str, spec: GenerationSpec, **extra: Any) -> Dict[str, Any]:
    """The side record of image ``index``: index, prompt, seed, guidance scale, steps, sampler, batch_invariant, then
    ``extra`` (the writer's own fields, in order)."""
    return {
        "index": index,
        "prompt": prompt,
        "seed": spec.seed + index,
        "guidance_scale": spec.guidance_scale,
        "steps": spec.steps,
        "sampler": spec.sampler,
        "batch_invariant": spec.batch_invariant,
        **extra,
    }


def write_image(folder: str, image: Any, record: Dict[str, Any]) -> str:
    """Write ``folder/{index:05d}.png`` (8-bit RGB, ``to_pil``) and its ``.json`` side record, each atomically; returns
    the PNG's path."""
    stem = os.path.join(folder, f"{int(record['index']):05d}")
    pil = to_pil(image)
    atomic_write(stem + ".png", lambda handle: pil.save(handle, format="PNG"))
    atomic_write_json(stem + ".json", record)
    return stem + ".png"
