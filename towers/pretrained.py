"""open_clip models from pretrained towers (any timm image model, any Hugging Face text model) and their locks.

A ``TowerSpec`` names the towers and what stays trainable. ``tower_model_config`` turns it into an ordinary
open_clip model config (``vision_cfg.timm_model_name``, ``text_cfg.hf_model_name``), ``register_tower_model``
registers it with open_clip under a name, and ``create_tower_model`` builds the model, loads the offline pretrained
weights and applies the locks. The result is a normal open_clip ``CustomTextCLIP``; its state dict reloads with
``open_clip.create_model_and_transforms(name, pretrained=FILE)`` in any process that imported ``towers.pretrained``
(whose import of ``towers.fid_inception`` registers the timm model ``inception_v3_tf_fid``). The ``TowerSpec`` type
itself lives in ``towers.spec`` (no torch), re-exported here.

Locking semantics (open_clip 3.3, checked in its source):
- image: ``TimmModel.lock(unlocked_groups)`` freezes the trunk's parameters except its last ``unlocked_groups``
  timm layer groups (``group_matcher``; Inception v3 has 13: stem 1a-2b, stem 3b-4a, then each Mixed block). The
  projection head is never locked. Its ``freeze_bn_stats=True`` replaces every ``BatchNorm2d`` with torchvision's
  ``FrozenBatchNorm2d``, which silently drops the ReLU that timm fuses into ``BatchNormAct2d`` (features blow up),
  so it is not used: ``freeze_locked_batchnorm`` keeps each locked BatchNorm in eval mode instead (same module
  type family, same state dict, running statistics used and never updated, also under ``model.train()``).
- text: ``HFTextEncoder.lock(unlocked_layers, freeze_layer_norm)`` freezes the embeddings and all but the last
  ``unlocked_layers`` transformer layers; LayerNorms of the frozen part stay trainable when
  ``freeze_layer_norm=False``. Its partial lock raises KeyError 'layer_attr' for BERT models (MiniLM): open_clip's
  ``arch_dict['bert']`` lacks the layer names, so ``lock_text_tower`` applies the same rule itself there. The text
  projection is never locked. Dropout of a locked text tower stays active in train mode (open_clip leaves it on).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import open_clip
import torch
import torch.nn as nn
from open_clip.hf_configs import arch_dict
from open_clip.hf_model import HFTextEncoder
from timm.layers import BatchNormAct2d

from harness_infra.atomic import atomic_write_text
from harness_infra.errors import ConfigError, require
from towers.fid_inception import default_cache_dir, load_fid_inception, load_trunk_weights
from towers.minilm import MINILM_ALIAS, MINILM_HUB_ID, loadable_config, register_loadable, resolve_text_model
from towers.spec import TowerSpec

log = logging.getLogger(__name__)

SHIPPED_MODEL = "RecapLiT-inception-minilm"


def tower_model_config(spec: TowerSpec) -> Dict[str, Any]:
    """The open_clip model config of ``spec`` (towers and projections; weights and locks are not part of it)."""
    text_model = MINILM_HUB_ID if spec.text_hf_model == MINILM_ALIAS else spec.text_hf_model
    return {
        "embed_dim": spec.embed_dim,
        "vision_cfg": {
            "image_size": spec.image_size,
            "timm_model_name": spec.image_timm_model,
            "timm_model_pretrained": False,
            "timm_pool": spec.image_pool,
            "timm_proj": spec.image_proj,
            "timm_proj_bias": False,
            "timm_drop": 0.0,
        },
        "text_cfg": {
            "hf_model_name": text_model,
            "hf_tokenizer_name": text_model,
            "hf_pooler_type": spec.text_pooler,
            "hf_proj_type": spec.text_proj,
            "context_length": spec.context_length,
        },
    }


def register_tower_model(name: str, spec: TowerSpec, config_dir: Optional[str] = None) -> Dict[str, Any]:
    """Register ``spec``'s config with open_clip under ``name`` (a json in ``config_dir``, default
    ``$RECAP_CACHE_DIR/pretrained/model_configs``, naming the text model by its hub id) and, in this process, the
    copy whose MiniLM loads from the wheel (``towers.minilm.register_loadable``); returns the portable config.

    A name open_clip already knows (a shipped ``RecapLiT-*`` config) must carry the same config.
    """
    resolve_text_model(spec.text_hf_model)
    config = tower_model_config(spec)
    known = open_clip.get_model_config(name)
    if known is not None:
        require(
            known in (config, loadable_config(config)),
            f"open_clip model {name!r} is registered with another config; pick a new name",
        )
    else:
        path = Path(config_dir or os.path.join(default_cache_dir(), "model_configs")) / f"{name}.json"
        atomic_write_text(str(path), json.dumps(config, indent=4) + "\n")
        open_clip.add_model_config(path)
    register_loadable(name, config)
    return config


def load_image_weights(trunk: nn.Module, source: str, cache_dir: Optional[str] = None) -> None:
    """Load ``source`` ("fid_inception" or a state-dict file) into the timm trunk; missing/unexpected keys raise."""
    if source == "fid_inception":
        load_fid_inception(trunk, cache_dir)
        return
    state = torch.load(source, map_location="cpu", weights_only=True)
    load_trunk_weights(trunk, state.get("state_dict", state))


def create_tower_model(
    name: str, spec: TowerSpec, device: str = "cpu", seed: int = 0, cache_dir: Optional[str] = None
) -> nn.Module:
    """An open_clip model with ``spec``'s towers: pretrained weights loaded offline, locks applied.

    Randomly initialised parts (projections, logit scale) depend on ``seed`` only; the global RNG is untouched.
    ``cache_dir`` (default ``$RECAP_CACHE_DIR/pretrained``) holds the converted image weights and the config json.
    """
    cache_dir = cache_dir or default_cache_dir()
    register_tower_model(name, spec, os.path.join(cache_dir, "model_configs"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(
            name, device=device, pretrained_image=False, pretrained_text=spec.text_pretrained
        )
    if not hasattr(model.text, "proj"):
        raise ConfigError(
            f"model.tower.text_proj=null needs embed_dim equal to the text width (embed_dim={spec.embed_dim})"
        )
    require(
        spec.context_length <= model.text.context_length,
        f"model.tower.context_length={spec.context_length} exceeds the text model's {model.text.context_length} positions",
    )
    if spec.image_pretrained is not None:
        load_image_weights(model.visual.trunk, spec.image_pretrained, cache_dir)
    apply_locks(model, spec)
    return model


def tower_tokenizer(name: str, spec: TowerSpec, config_dir: Optional[str] = None) -> Callable:
    """open_clip's tokenizer for a tower model (the text tower's own Hugging Face tokenizer, at ``context_length``)."""
    register_tower_model(name, spec, config_dir)
    return open_clip.get_tokenizer(name)


class StatsFrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that stays in eval mode: normalises with running statistics and never updates them."""

    def train(self, mode: bool = True) -> "StatsFrozenBatchNorm2d":
        """Ignore ``mode``: always eval."""
        return super().train(False)


class StatsFrozenBatchNormAct2d(BatchNormAct2d):
    """timm BatchNormAct2d (BatchNorm + fused activation) that stays in eval mode."""

    def train(self, mode: bool = True) -> "StatsFrozenBatchNormAct2d":
        """Ignore ``mode``: always eval."""
        return super().train(False)


STATS_FROZEN = {nn.BatchNorm2d: StatsFrozenBatchNorm2d, BatchNormAct2d: StatsFrozenBatchNormAct2d}


def freeze_locked_batchnorm(module: nn.Module) -> int:
    """Keep every BatchNorm whose parameters are all frozen in eval mode for good; returns how many.

    The class is swapped for a subclass that only overrides ``train`` (no new state), so weights, state-dict keys
    and outputs are unchanged and an exported state dict loads into the plain model.
    """
    count = 0
    for name, child in module.named_modules():
        if not isinstance(child, nn.modules.batchnorm._BatchNorm) or type(child) in STATS_FROZEN.values():
            continue
        if any(p.requires_grad for p in child.parameters(recurse=False)):
            continue
        if type(child) not in STATS_FROZEN:
            raise NotImplementedError(
                f"cannot freeze statistics of {name} ({type(child).__name__}); "
                f"supported: {', '.join(t.__name__ for t in STATS_FROZEN)}"
            )
        child.__class__ = STATS_FROZEN[type(child)]
        child.train(False)
        count += 1
    return count


def apply_locks(model: nn.Module, spec: TowerSpec) -> None:
    """Lock the towers as ``spec`` says (open_clip's ``lock_image_tower`` / ``lock_text_tower``, BatchNorm fixed here)."""
    if spec.lock_image:
        model.lock_image_tower(unlocked_groups=spec.image_unlocked_groups, freeze_bn_stats=False)
        if spec.image_freeze_bn_stats:
            frozen = freeze_locked_batchnorm(model.visual.trunk)
            log.info("image tower: %d locked BatchNorm layers kept in eval mode", frozen)
        if spec.image_unlock_norms:
            for child in model.visual.trunk.modules():
                if isinstance(child, nn.modules.batchnorm._BatchNorm):
                    for param in child.parameters(recurse=False):
                        param.requires_grad = True
    if spec.lock_text:
        lock_text_tower(model, spec.text_unlocked_layers, freeze_layer_norm=not spec.text_unlock_norms)


def lock_text_tower(model: nn.Module, unlocked_layers: int, freeze_layer_norm: bool) -> None:
    """open_clip's ``lock_text_tower``; for Hugging Face architectures whose open_clip ``arch_dict`` entry lacks the
    layer names a partial lock needs (``bert``: KeyError 'layer_attr'), the same rule on the located modules."""
    text = model.text
    names = arch_dict.get(getattr(getattr(text, "config", None), "model_type", ""), {}).get("config_names", {})
    if (
        not isinstance(text, HFTextEncoder)
        or not unlocked_layers
        or {"layer_attr", "token_embeddings_attr"} <= set(names)
    ):
        model.lock_text_tower(unlocked_layers=unlocked_layers, freeze_layer_norm=freeze_layer_norm)
        return
    encoder = getattr(text.transformer, "encoder", text.transformer)
    layers = next((getattr(encoder, a) for a in ("layer", "layers", "block") if hasattr(encoder, a)), None)
    embeddings = next(
        (getattr(text.transformer, a) for a in ("embeddings", "embed_tokens") if hasattr(text.transformer, a)), None
    )
    if layers is None or embeddings is None:
        raise NotImplementedError(
            f"cannot find the embeddings and layer list of {type(text.transformer).__name__} to lock"
        )
    for module in [embeddings, *layers][:-unlocked_layers]:  # open_clip's HFTextEncoder.lock rule
        for name, param in module.named_parameters():
            param.requires_grad = (not freeze_layer_norm) if "LayerNorm" in name.split(".") else False


def trainable_parameter_names(model: nn.Module) -> List[str]:
    """Names of the parameters an optimizer will update (``requires_grad``), in module order."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def trunk_of(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """The trunk of an open_clip timm image tower (``visual.trunk`` then ``visual.head``), else None."""
    visual = getattr(model, "visual", None)
    return visual.trunk if hasattr(visual, "trunk") and hasattr(visual, "head") else None
