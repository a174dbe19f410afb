"""The model families a harness run can train (``trainer=clip|dit``): how each trains and how it loads for evaluation.

A ``Family`` names the typed configs of its ``model:`` and ``train:`` groups (registered with Hydra as
``model/{name}_schema`` and ``train/{name}_schema``, which every file of those groups extends), the function that
trains it from the mixed caption shards, and the function that loads its export as the kind of model the eval tasks
take (``evals.tasks.registry.KINDS``). Adding a family = its package plus one entry in ``FAMILIES``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict

from evals.tasks.registry import EMBEDDER, GENERATOR, ImageGenerator, ImageTextEmbedder, set_clip_export_loader
from train_clip.config import ClipModelConfig, TrainConfig
from train_dit.config import DitModelConfig, DitTrainConfig


@dataclass(frozen=True)
class Family:
    """One model family.

    ``train(model_cfg, train_cfg, data_cfg, mix_cfg, out_dir) -> result`` (a dataclass with ``export_dir``,
    ``samples_seen``, ``global_batch``, ``steps``); ``load(export_dir, device) -> evaluable`` of kind ``produces``.
    """

    name: str
    model_config: type
    train_config: type
    produces: str
    train: Callable[..., Any]
    load: Callable[[str, str], Any]


def _train_clip(model_cfg: Any, train_cfg: Any, data_cfg: Any, mix_cfg: Any, out_dir: str) -> Any:
    """train_clip.train.train, imported when a run trains."""
    from train_clip.train import train

    return train(model_cfg, train_cfg, data_cfg, mix_cfg, out_dir=out_dir)


def _load_clip(export_dir: str, device: str) -> ImageTextEmbedder:
    """An exported CLIP through open_clip's own loader (``local-dir:``)."""
    from train_clip.models import load_for_eval

    return ImageTextEmbedder(*load_for_eval(export_dir, device))


def _train_dit(model_cfg: Any, train_cfg: Any, data_cfg: Any, mix_cfg: Any, out_dir: str) -> Any:
    """train_dit.train.train, imported when a run trains."""
    from train_dit.train import train

    return train(model_cfg, train_cfg, data_cfg, mix_cfg, out_dir=out_dir)


def _load_dit(export_dir: str, device: str) -> ImageGenerator:
    """An exported DiT as the generator the text-to-image tasks take (its ``train_dit.sample.DitPipeline``)."""
    from train_dit.sample import DitPipeline

    pipeline = DitPipeline.from_pretrained(export_dir, device)
    return ImageGenerator(pipeline, description={"export_dir": export_dir, **pipeline.description})


FAMILIES: Dict[str, Family] = {family.name: family for family in (
    Family("clip", ClipModelConfig, TrainConfig, EMBEDDER, _train_clip, _load_clip),
    Family("dit", DitModelConfig, DitTrainConfig, GENERATOR, _train_dit, _load_dit),
)}
set_clip_export_loader(_load_clip)  # a text-to-image task's CLIP evaluator given as an export folder (Recap-CLIP score)


def train_result_info(result: Any) -> Dict[str, Any]:
    """A family's train result as JSON-ready stage info."""
    from harness_infra.stagecache import canonical

    return canonical(result) if dataclasses.is_dataclass(result) else dict(result)
