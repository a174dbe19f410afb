"""Typed configuration of the evaluation suite (validated at start-up, one-line ConfigError messages)."""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

from captiondata.config import DEFAULT_MAX_PIXELS, default_data_root
from captiondata.queries import QUERY_STYLES
from evals.results.bootstrap import Resampling
from evals.tasks.registry import TASKS
from harness_infra.errors import ConfigError, one_line, require
from harness_infra.stagecache import setting
from training.generation import GenerationSpec

FORMATS = ("image_folder", "clip_benchmark_wds", "project_shards", "flickr8k", "caption_folder")
PRECISIONS = ("fp32", "bf16", "fp16")
PROMPT_SOURCES = ("original", "recap", *(style for style in QUERY_STYLES if style != "references"))

__all__ = [
    "ConfigError",
    "EvalConfig",
    "TaskConfig",
    "ZeroShotTaskConfig",
    "RetrievalTaskConfig",
    "DiagnosticsTaskConfig",
    "T2ITaskConfig",
    "FidTaskConfig",
    "ClipScoreTaskConfig",
    "PromptFollowingTaskConfig",
    "JudgeTaskConfig",
    "TASK_CONFIGS",
    "TASKS",
    "FORMATS",
    "resolve_data_path",
    "task_config",
]


def resolve_data_path(path: str) -> str:
    """An absolute path: relative paths are taken under the shared data root ($RECAP_DATA_ROOT)."""
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) or "://" in path else os.path.normpath(os.path.join(default_data_root(), path))


@dataclass(kw_only=True)
class TaskConfig:
    """What every evaluation task has: a name, its task kind and the data set it reads. Each kind has its own config
    (``TASK_CONFIGS``: ``ZeroShotTaskConfig``, ``RetrievalTaskConfig``, ``FidTaskConfig``, ...), built from a mapping
    by ``task_config``; a key the kind does not have is a one-line ConfigError naming it.

    task: ``zeroshot_classification`` | ``retrieval`` | ``long_retrieval`` | ``caption_diagnostics`` (CLIP tasks), or
    ``fid`` | ``clip_score`` | ``prompt_following`` | ``vlm_judge`` (text-to-image tasks on an image generator).
    format: ``image_folder`` (``path/split/class/*.jpg``), ``clip_benchmark_wds`` (``path/split/*.tar`` plus
    ``classnames.txt``/``zeroshot_classification_templates.txt``), ``project_shards`` (shard spec; references =
    ground-truth captions), ``flickr8k`` (the raw release: ``images/``, ``Flickr8k.token.txt``, split lists) or
    ``caption_folder`` (Urban-1K style ``image/NAME.jpg`` + ``caption/NAME.txt``).
    path: folder or shard spec; relative folders live under the data root ($RECAP_DATA_ROOT), relative
    project_shards specs under the working directory (where the data stage writes them). max_samples: evaluate the
    first N images only (None = all). max_image_pixels: images with more pixels are skipped and counted
    (``image_too_large``; the only limit, as ``data.max_image_pixels`` for training). exif_transpose: apply EXIF
    orientation tags (as ``data.exif_transpose``; default true, since raw folders hold camera photos stored sideways
    plus the tag; false reproduces torchvision's ``pil_loader`` and CLIP_benchmark, which ignore it). Both enter the
    set's fingerprint. Images are decoded by the training decoder (``captiondata.decode.decode_image``), captions
    normalised by ``captiondata.captions.normalize_caption``.
    """

    name: str
    task: str
    format: str
    path: str
    split: str = "test"
    max_samples: Optional[int] = None
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    exif_transpose: bool = True

    def __post_init__(self) -> None:
        require(bool(self.name), "eval task: 'name' must be a non-empty string")
        require(
            self.task in TASKS,
            f"eval task {self.name}: task={self.task!r} is unknown; choose one of {', '.join(TASKS)}",
        )
        require(
            isinstance(self, TASK_CONFIGS[self.task]),
            f"eval task {self.name}: task={self.task} takes a {TASK_CONFIGS[self.task].__name__}, not a {type(self).__name__}",
        )
        require(
            self.format in FORMATS,
            f"eval task {self.name}: format={self.format!r} is unknown; choose one of {', '.join(FORMATS)}",
        )
        require(
            self.max_samples is None or self.max_samples > 0,
            f"eval task {self.name}: max_samples={self.max_samples} must be positive or null",
        )
        require(
            self.max_image_pixels > 0,
            f"eval task {self.name}: max_image_pixels={self.max_image_pixels} must be positive",
        )
        require(bool(self.path), f"eval task {self.name}: 'path' must name a folder or shard spec")
        require(
            self.task == "zeroshot_classification" or self.format != "image_folder",
            f"eval task {self.name}: format=image_folder holds class labels, not captions; use it for zeroshot_classification",
        )

    def resolved_path(self) -> str:
        """The path to read: project shard specs as given, other relative paths under the data root."""
        return os.path.expanduser(self.path) if self.format == "project_shards" else resolve_data_path(self.path)


@dataclass(kw_only=True)
class ZeroShotTaskConfig(TaskConfig):
    """Zero-shot classification (``evals.tasks.zeroshot``) of an ``image_folder`` or ``clip_benchmark_wds`` set.

    classnames: ``imagenet`` (open_clip's IMAGENET_CLASSNAMES), a text file (one per line) or None (the data set's
    own). templates: a named set of ``evals.tasks.prompts.TEMPLATE_SETS``, a text file with ``{c}`` placeholders, or
    None (the data set's own, else ``openai_imagenet``).
    """

    task: str = "zeroshot_classification"
    format: str = "image_folder"
    classnames: Optional[str] = None
    templates: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.format in ("image_folder", "clip_benchmark_wds"),
            f"eval task {self.name}: zero-shot classification reads image_folder or clip_benchmark_wds, not {self.format}",
        )


@dataclass(kw_only=True)
class RetrievalTaskConfig(TaskConfig):
    """Image-text retrieval (``retrieval``, ``long_retrieval``: ``evals.tasks.retrieval``) on a captioned set.

    queries: the query style (``captiondata.queries.QUERY_STYLES``): ``references`` (the set's own captions) or a
    held-out style written from each sample's meta (``scenes_person``; project_shards only).
    """

    task: str = "retrieval"
    format: str = "project_shards"
    queries: str = "references"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.queries in QUERY_STYLES,
            f"eval task {self.name}: queries={self.queries!r} is unknown; choose one of {', '.join(QUERY_STYLES)}",
        )
        require(
            self.queries == "references" or self.format == "project_shards",
            f"eval task {self.name}: queries={self.queries} is written from project shards' meta; format={self.format} has none",
        )


@dataclass(kw_only=True)
class DiagnosticsTaskConfig(TaskConfig):
    """Caption diagnostics (``evals.tasks.diagnostics``): original, recaptions and references of project shards."""

    task: str = "caption_diagnostics"
    format: str = "project_shards"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.format == "project_shards",
            f"eval task {self.name}: caption_diagnostics reads project_shards (original, recaptions, references), not {self.format}",
        )


@dataclass(kw_only=True)
class T2ITaskConfig(TaskConfig):
    """A text-to-image task (``evals.tasks.t2i``) on the first ``max_samples`` samples of project shards: the prompt
    is the ``prompt_source`` caption (``original`` = raw, ``recap`` = the first recaption, or a held-out query style
    of ``captiondata.queries``, e.g. ``scenes_person``: its first text), the sample's image is the FID reference. Images are generated as ``generation`` says (``training.generation.GenerationSpec``, the spec the
    DiT's sample stage uses, with its defaults): seed ``generation.seed + i`` for prompt i, ``generation.batch_size``
    at a time; ``batch_invariant`` (default true) runs the generator one prompt at a time, so an image is bitwise
    independent of the batch size; false runs whole batches (1.45x faster for the scenes DiT-tiny on 2 CPU cores;
    an image then depends on the batch size at float rounding, ~1e-6 of the model output, and the batch size enters
    the image cache key).
    """

    format: str = "project_shards"
    prompt_source: str = "original"
    generation: GenerationSpec = field(default_factory=GenerationSpec)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.generation, GenerationSpec):
            self.generation = GenerationSpec(**self.generation)
        self.generation.check(f"eval task {self.name}: generation")
        require(
            self.format == "project_shards",
            f"eval task {self.name}: task={self.task} reads prompts and reference images from project_shards, not {self.format}",
        )
        require(
            self.prompt_source in PROMPT_SOURCES,
            f"eval task {self.name}: prompt_source={self.prompt_source!r} is unknown; choose one of {', '.join(PROMPT_SOURCES)}",
        )


@dataclass(kw_only=True)
class FidTaskConfig(T2ITaskConfig):
    """FID and KID (``evals.tasks.fid``): ``fid_bootstrap`` resamples for FID's interval, KID over ``kid_subsets``
    subsets of ``kid_subset_size``."""

    task: str = "fid"
    fid_bootstrap: int = 100
    kid_subsets: int = 100
    kid_subset_size: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.fid_bootstrap >= 0 and self.kid_subsets >= 1 and self.kid_subset_size >= 2,
            f"eval task {self.name}: fid_bootstrap >= 0, kid_subsets >= 1 and kid_subset_size >= 2 are required",
        )


@dataclass(kw_only=True)
class ClipScoreTaskConfig(T2ITaskConfig):
    """CLIP score under an evaluator, named by exactly one of: ``evaluator_experiment``, the experiment of a CLIP this
    harness trained (its train stage's export under ``run.out_root``: ``{out_root}/train/{experiment}-{hash}/export``,
    resolved by the eval stage, ``evals.tasks.t2i.experiment_export``; the Recap-CLIP score), or ``evaluator``, an
    open_clip ``NAME:PRETRAINED`` (or ``NAME`` with a weights file as ``NAME:/path``) or an export folder. The
    evaluator's Kendall tau-c with the Flickr8k-Expert judgments at ``expert_path`` (under the data root; null skips
    it) is recorded beside it."""

    task: str = "clip_score"
    evaluator: Optional[str] = None
    evaluator_experiment: Optional[str] = None
    expert_path: Optional[str] = "flickr8k"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            (self.evaluator is None) != (self.evaluator_experiment is None),
            f"eval task {self.name}: clip_score needs one of evaluator (an open_clip NAME:PRETRAINED, or a CLIP export folder) "
            f"or evaluator_experiment (the experiment of a CLIP this harness trained), not {'both' if self.evaluator else 'neither'}",
        )


@dataclass(kw_only=True)
class PromptFollowingTaskConfig(T2ITaskConfig):
    """Exact prompt following on the scenes (``evals.tasks.prompt_following``): the scene recognizer's training
    renders and epochs."""

    task: str = "prompt_following"
    recognizer_scenes: int = 2000
    recognizer_epochs: int = 12

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.recognizer_scenes >= 100 and self.recognizer_epochs >= 1,
            f"eval task {self.name}: recognizer_scenes >= 100 and recognizer_epochs >= 1 are required",
        )


@dataclass(kw_only=True)
class JudgeTaskConfig(T2ITaskConfig):
    """A VLM judge's 1-5 rating (``evals.tasks.judge``): ``judge_url`` (an OpenAI-compatible ``.../v1``),
    ``judge_model``, ``judge_rubric`` (a name of ``evals.tasks.judge.RUBRICS`` or a text with ``{prompt}``),
    concurrency, timeout and retries (url and model both null: the task is recorded as undefined)."""

    task: str = "vlm_judge"
    judge_url: Optional[str] = None
    judge_model: Optional[str] = None
    judge_rubric: str = "alignment_1to5"
    judge_concurrency: int = 4
    judge_timeout_s: float = 60.0
    judge_retries: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            (self.judge_url is None) == (self.judge_model is None),
            f"eval task {self.name}: vlm_judge needs judge_url and judge_model together (both null: the task is skipped, not scored)",
        )


TASK_CONFIGS: Dict[str, Type[TaskConfig]] = {
    "zeroshot_classification": ZeroShotTaskConfig,
    "retrieval": RetrievalTaskConfig,
    "long_retrieval": RetrievalTaskConfig,
    "caption_diagnostics": DiagnosticsTaskConfig,
    "fid": FidTaskConfig,
    "clip_score": ClipScoreTaskConfig,
    "prompt_following": PromptFollowingTaskConfig,
    "vlm_judge": JudgeTaskConfig,
}


UNSET = "<unset>"  # an entry key no file or override set: its kind's default (or eval.task_defaults') applies


def entry_schema(name: str, kinds: Sequence[type]) -> type:
    """The composition-time type of a task entry: every field of every kind in ``kinds`` (nested dataclasses as entries
    of their own), each ``Any`` defaulting to ``UNSET``. Hydra types ``eval.tasks`` with it, so a key no kind has is
    a one-line error at composition and ``eval.tasks.N.key=value`` overrides any key a file left out; the kind's own
    config (``task_config``) then types the keys that were set and rejects another kind's."""
    entries: Dict[str, Any] = {}
    for kind in kinds:
        hints = typing.get_type_hints(kind)
        for f in dataclasses.fields(kind):
            if f.name not in entries and dataclasses.is_dataclass(hints[f.name]):
                sub = entry_schema(f"{hints[f.name].__name__}Entry", [hints[f.name]])
                entries[f.name] = (f.name, sub, field(default_factory=sub))
            elif f.name not in entries:
                entries[f.name] = (f.name, Any, field(default=UNSET))
    entry = dataclasses.make_dataclass(name, list(entries.values()))
    entry.__module__ = __name__
    return entry


def set_keys(entry: Any) -> Dict[str, Any]:
    """The keys of a task entry (a mapping or an ``entry_schema`` instance) that were set, nested ones included."""
    items = dataclasses.asdict(entry).items() if dataclasses.is_dataclass(entry) else dict(entry).items()
    out = {}
    for key, value in items:
        if isinstance(value, Mapping):
            value = set_keys(value)
            if not value:
                continue
        if not (isinstance(value, str) and value == UNSET):
            out[key] = value
    return out


def task_config(
    fields: Optional[Mapping[str, Any]] = None, defaults: Optional[Mapping[str, Any]] = None, **kwargs: Any
) -> TaskConfig:
    """The typed config of one task from a mapping (a ``conf/eval`` list entry) and/or keywords: ``defaults`` (an
    ``eval.task_defaults``) under the task's own keys, merged into its kind's structured schema (``TASK_CONFIGS[task]``,
    so values are type-checked and converted as Hydra does). Raises ConfigError (one line) for a missing or unknown
    ``task``, a key the kind does not have (named, with the kind's keys), a value of the wrong type or out of range."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    own = {**set_keys(fields or {}), **kwargs}
    defaults = set_keys(defaults or {})
    name = own.get("name", "?")
    kind = own.get("task")
    require(
        kind in TASK_CONFIGS, f"eval task {name}: task={kind!r} is unknown; choose one of {', '.join(TASK_CONFIGS)}"
    )
    schema = TASK_CONFIGS[kind]
    for source, where in ((defaults, "eval.task_defaults."), (own, "")):
        unknown = [key for key in source if key not in {f.name for f in dataclasses.fields(schema)}]
        if unknown:
            names = [f.name for f in dataclasses.fields(schema)]
            close = difflib.get_close_matches(unknown[0], names, n=1)
            raise ConfigError(
                f"eval task {name}: {where}{unknown[0]} is not a key of {schema.__name__} (task={kind} has: {', '.join(names)}"
                + (f"; did you mean {close[0]}?" if close else "")
                + ")"
            )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), defaults, own)
        return OmegaConf.to_object(merged)
    except ConfigError as exc:  # a __post_init__'s (GenerationSpec's names only its own key)
        message = str(exc)
        raise ConfigError(message if message.startswith("eval task") else f"eval task {name}: {message}") from None
    except (
        OmegaConfBaseException
    ) as exc:  # a nested key (generation.x) or a value of the wrong type, named by its full key
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"eval task {name}: " + (f"{key}: " if key else "") + str(exc).splitlines()[0]) from None
    except ValueError as exc:
        raise ConfigError(f"eval task {name}: {one_line(exc)}") from None


TaskEntry = entry_schema("TaskEntry", list(dict.fromkeys(TASK_CONFIGS.values())))


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
    before the task fails instead of publishing (``evals.tasks.suite.check_lost_share``). tasks: the tasks, each a
    ``TaskEntry`` at composition (``entry_schema``) and then typed by its kind (``task_config``); task_defaults: keys
    every task takes unless it sets them (merged under each task's own, nested ones such as ``generation`` key by key;
    each must be a key of every task's kind), so a file of similar tasks states what they share once.
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
    tasks: List[TaskEntry] = field(default_factory=list)  # type: ignore[valid-type]
    task_defaults: TaskEntry = setting(default_factory=TaskEntry, key=False)  # type: ignore[valid-type]  # merged into each task (the key holds those)

    def __post_init__(self) -> None:
        self.ks = tuple(int(k) for k in self.ks)
        self.tasks = [t if isinstance(t, TaskConfig) else task_config(t, self.task_defaults) for t in self.tasks]
        require(self.batch_size > 0, f"eval.batch_size={self.batch_size} must be positive")
        require(self.num_workers >= 0, f"eval.num_workers={self.num_workers} must be >= 0")
        require(
            self.precision in PRECISIONS,
            f"eval.precision={self.precision!r} is unknown; choose one of {', '.join(PRECISIONS)}",
        )
        require(
            self.bootstrap_samples >= 0,
            f"eval.bootstrap_samples={self.bootstrap_samples} must be >= 0 (0 = no intervals)",
        )
        require(self.permutation_samples > 0, f"eval.permutation_samples={self.permutation_samples} must be positive")
        require(0.0 < self.confidence < 1.0, f"eval.confidence={self.confidence} must be in (0, 1)")
        require(
            len(self.ks) > 0 and all(k > 0 for k in self.ks),
            f"eval.ks={list(self.ks)} must be a non-empty list of positive integers",
        )
        require(
            self.context_length is None or self.context_length >= 2,
            f"eval.context_length={self.context_length} must be >= 2 or null",
        )
        require(0.0 <= self.max_lost_share < 1.0, f"eval.max_lost_share={self.max_lost_share} must be in [0, 1)")
        require(self.score_block >= 1024, f"eval.score_block={self.score_block} must be >= 1024 similarity entries")
        require(bool(self.device), "eval.device must name a torch device such as cpu or cuda")
        names = [t.name for t in self.tasks]
        require(
            len(names) == len(set(names)),
            f"eval.tasks has duplicate names: {sorted({n for n in names if names.count(n) > 1})}",
        )
