"""Typed configuration of the evaluation suite (validated at start-up, one-line ConfigError messages)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from harness_infra.errors import ConfigError, require
from harness_infra.stagecache import setting
from captiondata.config import DEFAULT_MAX_PIXELS, default_data_root
from evals.results.bootstrap import Resampling
from evals.tasks.registry import GENERATOR, TASKS

FORMATS = ("image_folder", "clip_benchmark_wds", "project_shards", "flickr8k", "caption_folder")
PRECISIONS = ("fp32", "bf16", "fp16")
PROMPT_SOURCES = ("original", "recap")

__all__ = ["ConfigError", "EvalConfig", "TaskConfig", "TASKS", "FORMATS", "resolve_data_path"]


def resolve_data_path(path: str) -> str:
    """An absolute path: relative paths are taken under the shared data root ($RECAP_DATA_ROOT)."""
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) or "://" in path else os.path.normpath(os.path.join(default_data_root(), path))


@dataclass
class TaskConfig:
    """One evaluation task on one data set.

    task: ``zeroshot_classification`` | ``retrieval`` | ``long_retrieval`` | ``caption_diagnostics`` (CLIP tasks), or
    ``fid`` | ``clip_score`` | ``prompt_following`` | ``vlm_judge`` (text-to-image tasks on an image generator).
    format: ``image_folder`` (``path/split/class/*.jpg``), ``clip_benchmark_wds`` (``path/split/*.tar`` plus
    ``classnames.txt``/``zeroshot_classification_templates.txt``), ``project_shards`` (shard spec; references =
    ground-truth captions), ``flickr8k`` (the raw release: ``images/``, ``Flickr8k.token.txt``, split lists) or
    ``caption_folder`` (Urban-1K style ``image/NAME.jpg`` + ``caption/NAME.txt``).
    path: folder or shard spec; relative folders live under the data root ($RECAP_DATA_ROOT), relative
    project_shards specs under the working directory (where the data stage writes them). classnames: ``imagenet`` (open_clip's
    IMAGENET_CLASSNAMES), a text file (one per line) or None (the data set's own). templates: a named set of
    ``evals.tasks.prompts.TEMPLATE_SETS``, a text file with ``{c}`` placeholders, or None (the data set's own, else
    ``openai_imagenet``). max_samples: evaluate the first N images only (None = all). max_image_pixels: images with
    more pixels are skipped and counted (``image_too_large``; the only limit, as ``data.max_image_pixels`` for
    training). exif_transpose: apply EXIF orientation tags (as ``data.exif_transpose``; default true, since raw
    folders hold camera photos stored sideways plus the tag; false reproduces torchvision's ``pil_loader`` and
    CLIP_benchmark, which ignore it). Both enter the set's fingerprint.

    Text-to-image tasks (``evals.tasks.t2i``) read the first ``max_samples`` samples of project shards: the prompt is
    the ``prompt_source`` caption (``original`` = raw, ``recap`` = the first recaption), the sample's image is the FID
    reference. Images are generated with ``guidance_scale``, ``steps``, ``sampler`` and seed ``sample_seed + i`` for
    prompt i, ``generate_batch`` at a time; ``batch_invariant`` (default true) runs the generator one prompt at a time, so
    an image is bitwise independent of ``generate_batch`` (a DiT pipeline's ``batch_invariant``); false runs whole
    batches (1.45x faster for the scenes DiT-tiny on 2 CPU cores; an image then depends on ``generate_batch`` at float rounding, ~1e-6 of
    the model output, and ``generate_batch`` enters the image cache key). fid: ``fid_bootstrap`` resamples for FID's interval, KID over ``kid_subsets``
    subsets of ``kid_subset_size``. clip_score: ``evaluator`` = an open_clip ``NAME:PRETRAINED`` (or ``NAME`` with a
    weights file as ``NAME:/path``) or the export folder of a CLIP this harness trained (Recap-CLIP score); the
    evaluator's Kendall tau-c with the Flickr8k-Expert judgments at ``expert_path`` (under the data root; null skips it)
    is recorded beside it. prompt_following: the scene recognizer's training renders and epochs. vlm_judge:
    ``judge_url`` (an OpenAI-compatible ``.../v1``), ``judge_model``, ``judge_rubric`` (a name of
    ``evals.tasks.judge.RUBRICS`` or a text with ``{prompt}``), concurrency, timeout and retries (both null: skipped). Images are decoded by the training decoder
    (``captiondata.decode.decode_image``), captions normalised by ``captiondata.captions.normalize_caption``.
    """

    name: str = "cifar10"
    task: str = "zeroshot_classification"
    format: str = "image_folder"
    path: str = "cifar10"
    split: str = "test"
    classnames: Optional[str] = None
    templates: Optional[str] = None
    max_samples: Optional[int] = None
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    exif_transpose: bool = True
    # text-to-image tasks (evaluate an image_generator; see evals.tasks.t2i)
    prompt_source: str = "original"
    guidance_scale: float = 10.0
    steps: int = 250
    sampler: str = "ddpm"
    sample_seed: int = 0
    generate_batch: int = 16
    batch_invariant: bool = True
    evaluator: Optional[str] = None
    expert_path: Optional[str] = "flickr8k"
    fid_bootstrap: int = 100
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    recognizer_scenes: int = 2000
    recognizer_epochs: int = 12
    judge_url: Optional[str] = None
    judge_model: Optional[str] = None
    judge_rubric: str = "alignment_1to5"
    judge_concurrency: int = 4
    judge_timeout_s: float = 60.0
    judge_retries: int = 3

    def __post_init__(self) -> None:
        require(bool(self.name), "eval task: 'name' must be a non-empty string")
        require(self.task in TASKS, f"eval task {self.name}: task={self.task!r} is unknown; choose one of {', '.join(TASKS)}")
        require(self.format in FORMATS, f"eval task {self.name}: format={self.format!r} is unknown; choose one of {', '.join(FORMATS)}")
        require(self.max_samples is None or self.max_samples > 0, f"eval task {self.name}: max_samples={self.max_samples} must be positive or null")
        require(self.max_image_pixels > 0, f"eval task {self.name}: max_image_pixels={self.max_image_pixels} must be positive")
        require(self.task != "zeroshot_classification" or self.format in ("image_folder", "clip_benchmark_wds"),
                f"eval task {self.name}: zero-shot classification reads image_folder or clip_benchmark_wds, not {self.format}")
        require(self.task != "caption_diagnostics" or self.format == "project_shards",
                f"eval task {self.name}: caption_diagnostics reads project_shards (original, recaptions, references), not {self.format}")
        require(bool(self.path), f"eval task {self.name}: 'path' must name a folder or shard spec")
        require(self.task == "zeroshot_classification" or self.format != "image_folder",
                f"eval task {self.name}: format=image_folder holds class labels, not captions; use it for zeroshot_classification")

        if TASKS[self.task].evaluates == GENERATOR:
            self._check_t2i()

    def _check_t2i(self) -> None:
        """Settings of the text-to-image tasks (one-line ConfigErrors)."""
        require(self.format == "project_shards", f"eval task {self.name}: task={self.task} reads prompts and reference images from project_shards, not {self.format}")
        require(self.prompt_source in PROMPT_SOURCES, f"eval task {self.name}: prompt_source={self.prompt_source!r} is unknown; choose one of {', '.join(PROMPT_SOURCES)}")
        require(self.guidance_scale >= 0, f"eval task {self.name}: guidance_scale={self.guidance_scale} must be >= 0")
        require(self.steps >= 1 and self.generate_batch >= 1, f"eval task {self.name}: steps and generate_batch must be positive")
        require(self.sample_seed >= 0, f"eval task {self.name}: sample_seed={self.sample_seed} must be >= 0")
        require(self.fid_bootstrap >= 0 and self.kid_subsets >= 1 and self.kid_subset_size >= 2,
                f"eval task {self.name}: fid_bootstrap >= 0, kid_subsets >= 1 and kid_subset_size >= 2 are required")
        require(self.recognizer_scenes >= 100 and self.recognizer_epochs >= 1, f"eval task {self.name}: recognizer_scenes >= 100 and recognizer_epochs >= 1 are required")
        require(self.task != "clip_score" or bool(self.evaluator),
                f"eval task {self.name}: clip_score needs evaluator (an open_clip NAME:PRETRAINED, or a CLIP export folder this harness trained)")
        require(self.task != "vlm_judge" or (self.judge_url is None) == (self.judge_model is None),
                f"eval task {self.name}: vlm_judge needs judge_url and judge_model together (both null: the task is skipped, not scored)")

    def resolved_path(self) -> str:
        """The path to read: project shard specs as given, other relative paths under the data root."""
        return os.path.expanduser(self.path) if self.format == "project_shards" else resolve_data_path(self.path)


@dataclass
class EvalConfig:
    """How to run evaluations: batching, device, statistics and the embedding cache.

    batch_size: images or texts per forward pass. device: torch device string. num_workers: DataLoader
    processes for image decoding. precision: ``fp32`` or autocast ``bf16``/``fp16``. bootstrap_samples /
    permutation_samples: resamples for confidence intervals / paired tests; confidence: interval level.
    seed: seeds every resampling. cache_dir: embedding cache folder (None = no cache; under ``python -m evals.run`` a
    relative folder is taken under ``run.out_root``). records_dir: where ``evaluate_checkpoint`` writes records (the
    pipeline's eval stage writes into its own stage folder and publishes to ``run.results_dir``). ks: recall@k list.
    context_length: text context override (None = the model's own). score_block: max similarity entries held
    at once (memory bound of the chunked ranking). trim_text_padding: drop all-padding token columns before the
    text tower (exact for causal, EOT-pooled open_clip text towers and for Hugging Face towers, which mask
    padding; checked at run time). trunk_feature_cache: for open_clip timm image towers, also cache the trunk's
    pooled features keyed by the trunk's own weights, so models sharing a locked pretrained trunk (a LiT sweep)
    run the trunk once per data set and only their projection heads per model. max_lost_share: the largest share of a
    task's samples that may be skipped (bad images, labels or captions, dotted keys; counted by reason in the record)
    before the task fails instead of publishing (``evals.tasks.suite.check_lost_share``).
    """

    batch_size: int = setting(256, key=False)
    device: str = setting("cpu", key=False)
    num_workers: int = setting(0, key=False)
    precision: str = "fp32"
    bootstrap_samples: int = Resampling.bootstrap_samples
    permutation_samples: int = Resampling.permutation_samples
    confidence: float = Resampling.confidence
    seed: int = Resampling.seed
    cache_dir: Optional[str] = setting("cache/evals", key=False)
    records_dir: str = setting("cache/results/evals", key=False)
    ks: Tuple[int, ...] = (1, 5, 10)
    context_length: Optional[int] = None
    score_block: int = 1 << 24
    trim_text_padding: bool = True
    trunk_feature_cache: bool = False
    max_lost_share: float = setting(0.01, key=False)
    tasks: List[TaskConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ks = tuple(int(k) for k in self.ks)
        self.tasks = [t if isinstance(t, TaskConfig) else TaskConfig(**t) for t in self.tasks]
        require(self.batch_size > 0, f"eval.batch_size={self.batch_size} must be positive")
        require(self.num_workers >= 0, f"eval.num_workers={self.num_workers} must be >= 0")
        require(self.precision in PRECISIONS, f"eval.precision={self.precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
        require(self.bootstrap_samples >= 0, f"eval.bootstrap_samples={self.bootstrap_samples} must be >= 0 (0 = no intervals)")
        require(self.permutation_samples > 0, f"eval.permutation_samples={self.permutation_samples} must be positive")
        require(0.0 < self.confidence < 1.0, f"eval.confidence={self.confidence} must be in (0, 1)")
        require(len(self.ks) > 0 and all(k > 0 for k in self.ks), f"eval.ks={list(self.ks)} must be a non-empty list of positive integers")
        require(self.context_length is None or self.context_length >= 2, f"eval.context_length={self.context_length} must be >= 2 or null")
        require(0.0 <= self.max_lost_share < 1.0, f"eval.max_lost_share={self.max_lost_share} must be in [0, 1)")
        require(self.score_block >= 1024, f"eval.score_block={self.score_block} must be >= 1024 similarity entries")
        require(bool(self.device), "eval.device must name a torch device such as cpu or cuda")
        names = [t.name for t in self.tasks]
        require(len(names) == len(set(names)), f"eval.tasks has duplicate names: {sorted({n for n in names if names.count(n) > 1})}")
