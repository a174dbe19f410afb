"""The diffusers layout of a DiT export and its model card (``train_dit.train.export`` calls these).

``save_diffusers_pipeline`` writes what ``DiffusionPipeline.from_pretrained(EXPORT, trust_remote_code=True)``
loads: ``model_index.json`` (``_class_name`` = ``["pipeline", "RecapDiTPipeline"]``), ``pipeline.py`` (a copy of
``train_dit.hub_pipeline``), ``transformer/``, ``scheduler/`` (the SAMPLING scheduler of ``train.sample.sampler``,
built by ``train_dit.diffusion.sampling_scheduler``, so its ``clip_sample`` / ``thresholding`` are the harness's),
``vae/`` (latent space; None in pixel space), ``text_encoder/`` + ``tokenizer/`` (Hugging Face text encoders such
as MiniLM; None for open_clip towers, whose users pass ``prompt_embeds``). ``train_scheduler/`` keeps the training
scheduler (the harness's own loader derives every sampler from it). ``model_card`` is the README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict
from typing import Any, Dict, List

from harness_infra.atomic import atomic_write_json, atomic_write_text
from train_dit import hub_pipeline
from train_dit.config import DitModelConfig, DitTrainConfig
from train_dit.diffusion import sampling_scheduler

PIPELINE_CLASS = ["pipeline", "RecapDiTPipeline"]
LOAD_LINE = "DiffusionPipeline.from_pretrained(EXPORT, trust_remote_code=True)"


def scheduler_config(scheduler: Any) -> Dict[str, Any]:
    """A diffusers scheduler's config exactly as ``save_pretrained`` writes it and the harness's loader reads it back
    (``_class_name`` included, diffusers' in-memory ``_use_default_values`` not: with it, ``from_config`` would give
    a DPM-Solver++ built from DDPM's config its own ``timestep_spacing`` instead of the file's ``leading``)."""
    return json.loads(scheduler.to_json_string())


def save_diffusers_pipeline(
    folder: str,
    transformer: Any,
    train_scheduler: Any,
    train_cfg: DitTrainConfig,
    vae: Any,
    text: Any,
    scaling_factor: float,
) -> Any:
    """Write the diffusers pipeline into ``folder`` (see the module docstring); returns the sampling scheduler.
    ``text``: the run's ``train_dit.text.TextEncoder`` (its model and tokenizer are saved when it is a Hugging Face one)."""
    sample = train_cfg.sample
    sampler = sampling_scheduler(scheduler_config(train_scheduler), sample.sampler, pixel_space=vae is None)
    hf_text = text.spec.kind == "hf"
    pipe = hub_pipeline.RecapDiTPipeline(
        transformer=transformer,
        scheduler=sampler,
        vae=vae,
        text_encoder=text.model if hf_text else None,
        tokenizer=text.tokenizer if hf_text else None,
        prediction=train_cfg.resolved_prediction,
        scaling_factor=None if vae is None else float(scaling_factor),
        max_sequence_length=text.spec.max_length,
        default_num_inference_steps=sample.steps,
        default_guidance_scale=sample.guidance_scale,
    )
    pipe.save_pretrained(folder)
    index_path = os.path.join(folder, "model_index.json")
    with open(index_path, encoding="utf-8") as handle:
        index = json.load(handle)
    atomic_write_json(index_path, {**index, "_class_name": PIPELINE_CLASS})
    shutil.copyfile(hub_pipeline.__file__, os.path.join(folder, f"{PIPELINE_CLASS[0]}.py"))
    train_scheduler.save_pretrained(os.path.join(folder, "train_scheduler"))
    return sampler


def process_command() -> str:
    """This process's command line; the harness's entry point (``sys.argv[0]`` = ``.../evals/run.py`` under
    ``python -m evals.run``) is written as ``python -m evals.run``."""
    import shlex

    argv = list(sys.argv) or [""]
    head = ["-m", "evals.run"] if os.path.normpath(argv[0]).endswith(os.path.join("evals", "run.py")) else argv[:1]
    return shlex.join(["python", *head, *argv[1:]])


def _lines(pairs: Dict[str, Any]) -> List[str]:
    return [f"- **{name}**: {value}" for name, value in pairs.items()]


def model_card(
    model_cfg: DitModelConfig,
    train_cfg: DitTrainConfig,
    data_cfg: Any,
    mix_cfg: Any,
    sampler: Any,
    budget: Dict[str, Any],
    metrics: Dict[str, Any],
    command: str,
) -> str:
    """The export's README.md (Hugging Face model card): how to load it, the training data, p (the probability of the
    ORIGINAL caption), the budget, the metrics known at export and the command that trained it."""
    p = mix_cfg.p_original if mix_cfg is not None else None
    data = (
        {
            "data set": getattr(data_cfg, "name", None),
            "builder": getattr(data_cfg, "builder", None),
            "train shards": getattr(data_cfg, "train_shards", None),
        }
        if data_cfg is not None
        else {"data set": "in-memory batches (no data config)"}
    )
    text = model_cfg.text_encoder
    text_line = (
        f"`{text.name}` ({text.kind}; saved as `text_encoder/` + `tokenizer/`, {text.max_length} tokens)"
        if text.kind == "hf"
        else f"`{text.name}` ({text.kind}; not a diffusers component: pass `prompt_embeds` / `prompt_attention_mask`)"
    )
    sample = train_cfg.sample
    settings = {
        k: v
        for k, v in dict(sampler.config).items()
        if k
        in (
            "clip_sample",
            "clip_sample_range",
            "thresholding",
            "sample_max_value",
            "algorithm_type",
            "prediction_type",
            "use_flow_sigmas",
            "shift",
        )
    }
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags: [text-to-image, dit, recap-harness]",
        "---",
        "",
        f"# {model_cfg.name}",
        "",
        "A text-conditioned DiT (diffusers `PixArtTransformer2DModel`) trained by recap-harness on a mixture of original and "
        "recaptioned captions.",
        "",
        "## Use",
        "",
        "```python",
        "from diffusers import DiffusionPipeline",
        "",
        f"pipe = {LOAD_LINE}",
        'image = pipe("a red circle on a blue square").images[0]',
        "```",
        "",
        "`trust_remote_code=True` loads `pipeline.py` from this folder (`RecapDiTPipeline`): no diffusers pipeline samples "
        "a pixel-space DiT (no VAE), a MiniLM text encoder or an x0-predicting flow model. `scheduler/` is the sampler the "
        "harness samples with; `train_scheduler/` the training one.",
        "",
        "## Training",
        "",
        *_lines(
            {
                **data,
                "p": f"{p} (probability of the ORIGINAL caption per sample)",
                "mix strategy": getattr(mix_cfg, "strategy", None),
            }
        ),
        *_lines(
            {
                "image size": f"{model_cfg.image_size} px in {model_cfg.image_space.kind} space",
                "text encoder": text_line,
                "objective": f"{train_cfg.scheduler} ({train_cfg.resolved_prediction} prediction)",
                "caption dropout": train_cfg.caption_dropout,
                "weights": "EMA (`transformer/`)",
            }
        ),
        "",
        "## Budget",
        "",
        *_lines(budget),
        "",
        "## Metrics (at export)",
        "",
        *(_lines(metrics) if metrics else ["- none recorded at export (evaluations are published by the eval stage)"]),
        "",
        "## Sampling",
        "",
        *_lines(
            {
                "scheduler": f"`{type(sampler).__name__}` {json.dumps(settings)}",
                "sampler": sample.sampler,
                "steps": sample.steps,
                "guidance scale": sample.guidance_scale,
            }
        ),
        "",
        "## Command",
        "",
        "```",
        command,
        "```",
        "",
        "Recipe: " + json.dumps(asdict(train_cfg), default=str),
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: str, card: str) -> str:
    """Write ``folder/README.md`` atomically; returns its path."""
    path = os.path.join(folder, "README.md")
    atomic_write_text(path, card)
    return path
