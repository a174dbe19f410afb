"""The model families a harness run can train (``trainer=clip|dit``): everything a stage needs to know about one.

A ``Family`` names the typed configs of its ``model:`` and ``train:`` groups (registered with Hydra as
``model/{name}_schema`` and ``train/{name}_schema``, which every file of those groups extends), the stages it walks,
how the train stage prepares its recipe, the function that trains it from the mixed caption shards, the function
that loads its export as the kind of model the eval tasks take (``evals.tasks.registry.KINDS``; a generator gets the
loader of a CLIP export passed in, for a task whose evaluator is one), its table kind (``report.tables``), and, for a
family that has them, how its features are precomputed and how it samples images. The stages ask the family
(``family_of(cfg)``) and never branch on its name. Adding a family = its package, one entry in ``FAMILIES``, its
Hydra files (``conf/trainer/NAME.yaml``; ``model/`` and ``train/`` files extending ``NAME_schema``) and its package
named in pyproject.toml (setuptools ``include``, import-linter ``root_packages`` and the families' layer).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from evals.tasks.registry import EMBEDDER, GENERATOR, ImageGenerator, ImageTextEmbedder
from pipeline.infos import FeaturesInfo
from train_clip.config import ClipModelConfig, TrainConfig
from train_dit.config import DitModelConfig, DitTrainConfig

COMMON_STAGES = ("data", "recaption", "train", "eval", "tables")


@dataclass(frozen=True)
class Sampling:
    """How a generating family's sample stage draws images (its own functions).

    ``open(export_dir, device, use_ema) -> pipeline`` (EMA or trained weights); ``write_samples(pipeline, prompts,
    out_dir, spec, rank, world_size, export_dir)`` (``spec``: a ``training.generation.GenerationSpec``) writes
    ``images/{i:05d}.png`` + ``.json`` of this rank's share; ``write_grid(out_dir, prompts, columns) -> path``;
    ``prompts_from_records(records, source, n) -> prompts`` (original caption, first recaption or both).
    """

    open: Callable[[str, str, bool], Any]
    write_samples: Callable[..., None]
    write_grid: Callable[..., str]
    prompts_from_records: Callable[..., Any]


@dataclass(frozen=True)
class Family:
    """One model family: ``name`` (``trainer=NAME``), ``model_config`` / ``train_config`` (the typed schemas of its
    ``model:`` and ``train:`` groups), ``produces`` (the eval kind its export loads as:
    ``evals.tasks.registry.EMBEDDER`` or ``GENERATOR``).

    ``train(model_cfg, train_cfg, data_cfg, mix_cfg, out_dir) -> result`` (a dataclass with ``export_dir``,
    ``samples_seen``, ``global_batch``, ``steps``); ``load(export_dir, device) -> evaluable`` of kind ``produces``;
    ``stages``: the stage names a run of this family may list; ``prepare(recipe, cfg) -> recipe``: the recipe the
    train stage trains with; ``table_kind``: ``report.tables.write_tables``' family argument (``clip``: retrieval and
    zero-shot tables, ``t2i``: text-to-image tables); ``build_features(cfg, data) -> FeaturesInfo``: the features
    stage's work on the (recaptioned) data config, None when the family has no feature cache stage; ``sampling``: the
    sample stage's functions, None when the family does not generate images; ``reduces_captions``: its trainer reads
    the mixer's reduced texts and several positives per image (``mix.*_reduce``, ``mix.positives``: CLIP's loader
    and multi-positive loss), False where it trains on whole captions only (the DiT's precomputed text features).
    """

    name: str
    model_config: type
    train_config: type
    produces: str
    train: Callable[..., Any]
    load: Callable[[str, str], Any]
    prepare: Callable[[Any, Any], Any]
    table_kind: str
    stages: Tuple[str, ...] = COMMON_STAGES
    build_features: Optional[Callable[[Any, Any], FeaturesInfo]] = None
    sampling: Optional[Sampling] = None
    reduces_captions: bool = False


def feature_cache_dir(cfg: Any) -> str:
    """The feature cache a run trains from: ``train.feature_cache_dir``, by default ``{run.out_root}/features``."""
    return cfg.train.feature_cache_dir or os.path.join(cfg.run.out_root, "features")


def prepare_recipe(recipe: Any, cfg: Any) -> Any:
    """The recipe as a pipeline run trains it: resuming from its folder's latest checkpoint (a failed run goes on),
    its feature cache under ``run.out_root`` unless configured (both families' recipes have the two fields)."""
    return dataclasses.replace(recipe, resume="latest", feature_cache_dir=feature_cache_dir(cfg))


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
    """An exported DiT as the generator the text-to-image tasks take (its ``train_dit.sample.DitPipeline``), with the
    CLIP family's loader for a task whose evaluator is a harness CLIP export (the Recap-CLIP score)."""
    from train_dit.sample import DitPipeline

    pipeline = DitPipeline.from_pretrained(export_dir, device)
    return ImageGenerator(
        pipeline, description={"export_dir": export_dir, **pipeline.description}, evaluator_loader=_load_clip
    )


def _dit_features(cfg: Any, data: Any) -> FeaturesInfo:
    """Encode every shard of ``data`` missing from the DiT feature cache; its images, texts and sizes."""
    import torch

    from train_dit.features import bytes_per_million, ensure_features
    from train_dit.image import ImageSpace
    from train_dit.text import TextEncoder

    device = torch.device("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
    text = TextEncoder(cfg.model.text_encoder, device)
    space = ImageSpace(cfg.model.image_space, device, seed=cfg.train.seed)
    space.check(cfg.model)
    cache_dir = feature_cache_dir(cfg)
    store = ensure_features(
        data, cfg.mix, text, space, cfg.model.image_size, cfg.train.flip, cache_dir, cfg.train.feature_batch_size
    )
    return FeaturesInfo(
        cache_dir=os.path.abspath(cache_dir),
        images=len(store.images.keys),
        texts=len(store.index),
        bytes=store.nbytes(),
        bytes_per_million_images=bytes_per_million(store),
        x0_shape=list(store.images.features.shape[1:]),
        text_dim=text.dim,
        skipped=store.skipped,
    )


def _open_dit(export_dir: str, device: str, use_ema: bool) -> Any:
    """A DiT export's sampling pipeline, EMA (``use_ema``) or trained weights."""
    from train_dit.sample import DitPipeline

    return DitPipeline.from_pretrained(export_dir, device, "transformer" if use_ema else "transformer_online")


def _dit_sample(name: str) -> Callable[..., Any]:
    """``train_dit.sample.{name}``, imported when called."""

    def call(*args: Any, **kwargs: Any) -> Any:
        from train_dit import sample

        return getattr(sample, name)(*args, **kwargs)

    return call


DIT_SAMPLING = Sampling(
    open=_open_dit,
    write_samples=_dit_sample("write_samples"),
    write_grid=_dit_sample("write_grid"),
    prompts_from_records=_dit_sample("prompts_from_records"),
)

FAMILIES: Dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "clip",
            ClipModelConfig,
            TrainConfig,
            EMBEDDER,
            _train_clip,
            _load_clip,
            prepare_recipe,
            table_kind="clip",
            reduces_captions=True,
        ),
        Family(
            "dit",
            DitModelConfig,
            DitTrainConfig,
            GENERATOR,
            _train_dit,
            _load_dit,
            prepare_recipe,
            table_kind="t2i",
            stages=(*COMMON_STAGES, "features", "sample"),
            build_features=_dit_features,
            sampling=DIT_SAMPLING,
        ),
    )
}


def family_of(cfg: Any) -> Family:
    """The family of a validated config (``trainer``)."""
    return FAMILIES[cfg.trainer]


def train_result_info(result: Any) -> Dict[str, Any]:
    """A family's train result as JSON-ready stage info."""
    from harness_infra.stagecache import canonical

    return canonical(result) if dataclasses.is_dataclass(result) else dict(result)
