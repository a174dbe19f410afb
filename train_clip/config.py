"""Typed configuration of the CLIP trainer: the model (``model:`` group) and the training recipe (``train:`` group).

Every value is checked in ``__post_init__``; a bad one raises ``captiondata.config.ConfigError`` with a
one-line message that names the key, so a typo fails at start-up rather than hours into a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from harness_infra.errors import ConfigError, require
from harness_infra.stagecache import setting
from towers.spec import TowerSpec

WEIGHT_PRECISIONS = ("fp32", "bf16", "fp16", "pure_bf16", "pure_fp16")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16", "amp_bf16", "amp", "fp16")
SCHEDULES = ("cosine", "const")
DEVICES = ("auto", "cpu", "cuda")

__all__ = ["ClipModelConfig", "StageConfig", "TrainConfig", "ConfigError"]


@dataclass
class ClipModelConfig:
    """Which CLIP to train: an open_clip model name, or an inline open_clip model config registered under ``name``.

    ``name``: any name open_clip knows (``ViT-B-32``, or one of this package's ``RecapCLIP-*`` configs).
    ``inline``: an open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``); when given it is
    registered with open_clip under ``name`` so the exported checkpoint loads by that name.
    ``context_length``: text context length override (None = the config's).
    ``precision``: dtype the weights are created in (open_clip's ``precision``; fp32 unless you mean it).
    ``grad_checkpointing``: recompute activations in backward (``model.set_grad_checkpointing``).
    ``torch_compile``: wrap the model in ``torch.compile``.
    ``quick_gelu``: force QuickGELU activations (OpenAI-style).
    ``tower``: pretrained towers (LiT): a timm image model and a Hugging Face text model with offline weights and
    locks (``towers.spec.TowerSpec``); the model is registered with open_clip under ``name``, its
    tokenizer is the text tower's, and its image size and context length are the spec's.
    """

    name: str = "RecapCLIP-tiny"
    inline: Optional[Dict[str, Any]] = None
    context_length: Optional[int] = None
    precision: str = "fp32"
    grad_checkpointing: bool = False
    torch_compile: bool = False
    quick_gelu: bool = False
    tower: Optional[TowerSpec] = None

    def __post_init__(self) -> None:
        require(bool(self.name), "model.name must name an open_clip model (or the name to register model.inline under)")
        if self.tower is not None and not isinstance(self.tower, TowerSpec):
            self.tower = TowerSpec(**self.tower)
        if self.tower is not None:
            require(self.inline is None, "model.tower and model.inline are two ways to define the model; set one")
            require(
                self.precision == "fp32",
                f"model.precision={self.precision!r}: pretrained towers are loaded in fp32 (use train.precision for autocast)",
            )
            require(
                self.context_length in (None, self.tower.context_length),
                f"model.context_length={self.context_length} disagrees with model.tower.context_length={self.tower.context_length}; set the tower's",
            )
            require(not self.quick_gelu, "model.quick_gelu does not apply to pretrained towers")
        require(
            self.precision in WEIGHT_PRECISIONS,
            f"model.precision={self.precision!r} is unknown; choose one of {', '.join(WEIGHT_PRECISIONS)}",
        )
        require(
            self.context_length is None or self.context_length > 0,
            f"model.context_length={self.context_length} must be positive or null",
        )
        if self.inline is not None:
            missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in self.inline]
            require(
                not missing,
                f"model.inline lacks {', '.join(missing)} (an open_clip model config needs embed_dim, vision_cfg, text_cfg)",
            )


@dataclass
class StageConfig:
    """One stage of the recipe (CLIPA: low-resolution pre-training, then a short high-resolution stage).

    ``batch_size`` is per rank and per micro-step, as open_clip's ``--batch-size``; the effective global batch is
    ``batch_size x world_size x accum_steps``. ``global_batch_size``, when set, is checked against that product
    at start-up. ``samples``: samples this stage trains on (steps = ceil(samples / global batch)).
    Warm-up is given in ``warmup_samples`` or ``warmup_steps`` (not both; neither = no warm-up).
    """

    image_size: int = 64
    samples: int = 4096
    batch_size: int = 64
    lr: float = 5e-4
    warmup_samples: Optional[int] = None
    warmup_steps: Optional[int] = None
    global_batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        require(self.image_size > 0, f"train.stages[].image_size={self.image_size} must be positive")
        require(self.samples > 0, f"train.stages[].samples={self.samples} must be positive")
        require(self.batch_size > 0, f"train.stages[].batch_size={self.batch_size} must be positive")
        require(self.lr > 0, f"train.stages[].lr={self.lr} must be positive")
        require(
            self.warmup_samples is None or self.warmup_steps is None,
            "train.stages[]: set warmup_samples or warmup_steps, not both",
        )
        require(
            (self.warmup_samples or 0) >= 0 and (self.warmup_steps or 0) >= 0,
            "train.stages[].warmup_samples/warmup_steps must be >= 0",
        )
        require(
            self.global_batch_size is None or self.global_batch_size > 0,
            f"train.stages[].global_batch_size={self.global_batch_size} must be positive or null",
        )

    def global_batch(self, world_size: int, accum_steps: int) -> int:
        """Samples per optimizer step over all ranks and micro-steps."""
        return self.batch_size * world_size * accum_steps

    def num_steps(self, world_size: int, accum_steps: int) -> int:
        """Optimizer steps of this stage: ceil(samples / global batch)."""
        return -(-self.samples // self.global_batch(world_size, accum_steps))

    def num_warmup_steps(self, world_size: int, accum_steps: int) -> int:
        """Warm-up length in optimizer steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return -(-(self.warmup_samples or 0) // self.global_batch(world_size, accum_steps))


@dataclass
class TrainConfig:
    """The training recipe: stages, AdamW, clipping, precision, accumulation, checkpoints, logging, distribution.

    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32``, ``bf16``/``amp_bf16`` (bf16
    autocast), ``amp``/``fp16`` (fp16 autocast with a GradScaler; CUDA only).
    ``resume``: null (start fresh; refuses a folder that already holds checkpoints), ``latest`` (newest
    checkpoint in ``out_dir/checkpoints``, or start fresh when there is none) or a checkpoint path.
    ``checkpoint_every_steps``: 0 = only at stage ends and at the end. ``local_loss``/``gather_with_grad``:
    open_clip's distributed contrastive loss (local rows against all gathered features, gradient through the gather).
    ``threads``: torch intra-op threads (null = torch's default). ``deterministic``: deterministic kernels
    (bitwise-reproducible resume on CPU).
    ``frozen_image_features``: train from precomputed features of the locked image trunk (LiT): needs
    ``model.tower`` with a fully locked image tower, and trains on the model's deterministic eval transform
    (resize + centre crop) instead of random crops. ``feature_cache_dir``: where those features are stored, keyed
    by trunk weights, preprocessing and shard files (null = computed in memory for this run only).
    ``caption_loss_weight``: for a CoCa model, the weight of the captioning loss beside the contrastive one
    (open_clip_train's ``--coca-caption-loss-weight``, default 2.0); ignored for CLIP models.
    ``trim_text_padding``: run the text tower only up to each batch's longest caption (``towers.text_trim``; exact
    for causal open_clip text towers with EOT pooling and for Hugging Face towers: loss and gradients equal the
    full-context step up to float summation order). At context 128, alt-text of 10-18 tokens leaves most of the
    untrimmed text tower's work on padding. Ignored for CoCa (its decoder reads every position).
    """

    stages: List[StageConfig] = field(default_factory=lambda: [StageConfig()])
    schedule: str = "cosine"
    weight_decay: float = 0.2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    grad_clip_norm: Optional[float] = 1.0
    accum_steps: int = 1
    seed: int = 0
    precision: str = "auto"
    trim_text_padding: bool = True
    device: str = setting("auto", key=False)
    threads: Optional[int] = setting(None, key=False)
    deterministic: bool = False
    checkpoint_every_steps: int = setting(0, key=False)
    keep_checkpoints: int = setting(2, key=False)
    resume: Optional[str] = setting(None, key=False)
    log_every: int = setting(10, key=False)
    tensorboard: bool = setting(True, key=False)
    wandb_project: Optional[str] = setting(None, key=False)  # log to Weights & Biases too (training.monitor)
    progress_bar: bool = setting(True, key=False)
    local_loss: bool = True
    gather_with_grad: bool = True
    dist_backend: Optional[str] = None
    frozen_image_features: bool = False
    caption_loss_weight: float = 2.0
    feature_cache_dir: Optional[str] = setting(None, key=False)

    def __post_init__(self) -> None:
        require(len(self.stages) > 0, "train.stages must list at least one stage")
        self.stages = [s if isinstance(s, StageConfig) else StageConfig(**s) for s in self.stages]
        require(
            self.schedule in SCHEDULES,
            f"train.schedule={self.schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}",
        )
        require(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay} must be >= 0")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"train.betas={list(self.betas)} must be two values in [0, 1)",
        )
        require(self.eps > 0, f"train.eps={self.eps} must be positive")
        require(
            self.grad_clip_norm is None or self.grad_clip_norm > 0,
            f"train.grad_clip_norm={self.grad_clip_norm} must be positive or null",
        )
        require(self.accum_steps >= 1, f"train.accum_steps={self.accum_steps} must be >= 1")
        require(
            self.precision in TRAIN_PRECISIONS,
            f"train.precision={self.precision!r} is unknown; choose one of {', '.join(TRAIN_PRECISIONS)}",
        )
        require(self.device in DEVICES, f"train.device={self.device!r} is unknown; choose one of {', '.join(DEVICES)}")
        require(self.threads is None or self.threads > 0, f"train.threads={self.threads} must be positive or null")
        require(
            self.checkpoint_every_steps >= 0,
            f"train.checkpoint_every_steps={self.checkpoint_every_steps} must be >= 0 (0 = stage ends only)",
        )
        require(self.keep_checkpoints >= 1, f"train.keep_checkpoints={self.keep_checkpoints} must be >= 1")
        require(self.log_every >= 1, f"train.log_every={self.log_every} must be >= 1")
        require(
            self.gather_with_grad or not self.local_loss,
            "train.local_loss=true needs train.gather_with_grad=true (otherwise other ranks' rows get no gradient)",
        )
        require(self.caption_loss_weight >= 0, f"train.caption_loss_weight={self.caption_loss_weight} must be >= 0")
        require(
            self.dist_backend in (None, "gloo", "nccl"),
            f"train.dist_backend={self.dist_backend!r} is unknown; choose gloo, nccl or null (auto)",
        )
