"""Typed configuration for caption shards and the caption mixer (validated at start-up)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from harness_infra.errors import require
from harness_infra.stagecache import key_fields, setting

STRATEGIES = ("mix", "original", "recap", "concat")
REDUCTIONS = ("full", "sub_caption", "token_span", "truncate")  # mix.recap_reduce / mix.original_reduce
SOURCES = ("recap", "original")  # the caption sources a reduction applies to (prefix of its keys)
REDUCTION_FIELDS = (
    "recap_reduce",
    "original_reduce",
    "recap_tokens",
    "original_tokens",
    "recap_sentences",
    "original_sentences",
    "positives",
)  # the keys added after the stage keys existed: at their defaults they stay out of every key (``MixConfig.stage_key``)
DEFAULT_MAX_PIXELS = 64_000_000  # data.max_image_pixels and the evaluation tasks' max_image_pixels
DEFAULT_MAX_MEMBER_BYTES = (
    4 * DEFAULT_MAX_PIXELS
)  # data.max_member_bytes: an uncompressed 8-bit RGBA image at the pixel limit


@dataclass
class CaptionField:
    """Where one caption lives in a sample: tar member suffix and, for JSON members, a dotted field path.

    The value found may be a string or a list of strings (several recaptions in one field).
    """

    member: str = "txt"
    field: Optional[str] = None

    def __post_init__(self) -> None:
        require(bool(self.member), "caption field: 'member' must name a tar member suffix such as txt or json")


@dataclass
class CaptionLayout:
    """Which tar members hold which caption: configuration, not code.

    ``original``: the web alt-text; ``recaptions``: one or more recaption fields (all candidates are
    pooled); ``references``: the ground-truth captions used for retrieval evaluation (None = original).
    """

    original: CaptionField = field(default_factory=lambda: CaptionField("txt"))
    recaptions: List[CaptionField] = field(default_factory=lambda: [CaptionField("json", "recaptions")])
    references: Optional[CaptionField] = None
    image_members: List[str] = field(default_factory=lambda: ["jpg", "jpeg", "png", "webp"])

    def __post_init__(self) -> None:
        require(len(self.image_members) > 0, "data.layout.image_members must list at least one suffix")


def project_layout() -> CaptionLayout:
    """The project's own layout: .txt = original, .json {recaptions: [...], captions: [...]}."""
    return CaptionLayout(
        original=CaptionField("txt"),
        recaptions=[CaptionField("json", "recaptions")],
        references=CaptionField("json", "captions"),
    )


def recap_datacomp_layout() -> CaptionLayout:
    """Recap-DataComp-1B as img2dataset writes it: .txt = re_caption, .json has org_caption."""
    return CaptionLayout(
        original=CaptionField("json", "org_caption"),
        recaptions=[CaptionField("txt")],
        references=None,
    )


@dataclass
class MixConfig:
    """The caption mixer. p = probability of the ORIGINAL caption for each sample (1.0 = alt-text only).

    strategy: ``mix`` (per sample: original with probability p, else a recaption), ``original``,
    ``recap``, ``concat`` (original + separator + recaption). The draw is a pure function of
    (seed, sample key, epoch).

    Each source's text can then be shortened (``recap_reduce`` for the recaption, ``original_reduce`` for the original;
    definitions in ``captiondata.mixer.reduce_text``, after CLIPS, Liu et al. 2024, arXiv 2411.16828): ``full`` (the
    whole caption), ``sub_caption`` (``*_sentences`` = K consecutive sentences, start uniform per (seed, key, epoch)),
    ``token_span`` (a random span of ``*_tokens`` = K consecutive whitespace words) or ``truncate`` (the first K words).
    ``*_tokens`` = null with token_span or truncate is the whole caption (= full: the sweep point "full" of a token
    budget axis). A caption no longer than K is kept whole. ``positives`` = n: each image trains with n texts, n
    independent draws (coin, recaption and reduction, per positive index), as positives of one image in the
    multi-positive contrastive loss (DreamLIP, Zheng et al. ECCV 2024; ``train_clip.step.MultiPositiveClipLoss``).
    """

    strategy: str = "mix"
    p: float = 0.8
    seed: int = 0
    concat_separator: str = " "
    recap_reduce: str = "full"
    original_reduce: str = "full"
    recap_tokens: Optional[int] = None
    original_tokens: Optional[int] = None
    recap_sentences: int = 1
    original_sentences: int = 1
    positives: int = 1

    def __post_init__(self) -> None:
        require(
            self.strategy in STRATEGIES,
            f"mix.strategy={self.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}",
        )
        require(
            0.0 <= float(self.p) <= 1.0, f"mix.p={self.p} is outside [0, 1] (p = probability of the ORIGINAL caption)"
        )
        for source in SOURCES:
            reduce = getattr(self, f"{source}_reduce")
            tokens = getattr(self, f"{source}_tokens")
            sentences = getattr(self, f"{source}_sentences")
            require(
                reduce in REDUCTIONS,
                f"mix.{source}_reduce={reduce!r} is unknown; choose one of {', '.join(REDUCTIONS)}",
            )
            require(
                tokens is None or (isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 1),
                f"mix.{source}_tokens={tokens!r} must be a whole number of words >= 1, or null (the whole caption)",
            )
            require(
                tokens is None or reduce in ("token_span", "truncate"),
                f"mix.{source}_tokens={tokens} is read only by mix.{source}_reduce=token_span or truncate "
                f"(mix.{source}_reduce={reduce})",
            )
            require(
                isinstance(sentences, int) and not isinstance(sentences, bool) and sentences >= 1,
                f"mix.{source}_sentences={sentences!r} must be a whole number of sentences >= 1",
            )
            require(
                sentences == 1 or reduce == "sub_caption",
                f"mix.{source}_sentences={sentences} is read only by mix.{source}_reduce=sub_caption "
                f"(mix.{source}_reduce={reduce})",
            )
        require(
            isinstance(self.positives, int) and not isinstance(self.positives, bool) and self.positives >= 1,
            f"mix.positives={self.positives!r} must be a whole number >= 1 (texts per image)",
        )

    @property
    def p_original(self) -> Optional[float]:
        """The probability of the ORIGINAL caption per sample this strategy realises: ``p`` for ``mix``, 1 for
        ``original``, 0 for ``recap``, None for ``concat`` (both captions in every text)."""
        return {"mix": float(self.p), "original": 1.0, "recap": 0.0}.get(self.strategy)

    def reduce_of(self, source: str) -> Tuple[str, Optional[int]]:
        """(reduction, K) of one source (``recap`` or ``original``) as it acts: K = sentences for sub_caption, words for
        token_span and truncate, None for full; token_span or truncate with no word budget is ``full``."""
        reduce = getattr(self, f"{source}_reduce")
        if reduce == "sub_caption":
            return reduce, int(getattr(self, f"{source}_sentences"))
        tokens = getattr(self, f"{source}_tokens")
        if reduce in ("token_span", "truncate") and tokens is not None:
            return reduce, int(tokens)
        return "full", None

    def reduction(self) -> Dict[str, Any]:
        """The reduction settings that act (records' ``run.reduction``): {} for whole captions and one positive, else
        e.g. {"recap_reduce": "token_span", "recap_tokens": 16} or {"positives": 2}."""
        out: Dict[str, Any] = {}
        for source in SOURCES:
            reduce, k = self.reduce_of(source)
            if reduce != "full":
                out[f"{source}_reduce"] = reduce
                out[f"{source}_sentences" if reduce == "sub_caption" else f"{source}_tokens"] = k
        if self.positives != 1:
            out["positives"] = int(self.positives)
        return out

    def reduction_label(self) -> str:
        """A short name of ``reduction()`` for tables: "full", "recap sub_caption K=1", "recap token_span K=16, n=2
        positives"."""
        parts = []
        for source in SOURCES:
            reduce, k = self.reduce_of(source)
            if reduce != "full":
                parts.append(f"{source} {reduce} K={k}")
        if self.positives != 1:
            parts.append(f"n={self.positives} positives")
        return ", ".join(parts) or "full"

    def stage_key(self) -> Dict[str, Any]:
        """The mixer's part of the train stage key: its key fields, with the reduction keys (``REDUCTION_FIELDS``)
        replaced by ``reduction()``, which is empty at their defaults, so every config written before they existed
        keeps its key, and settings that act alike (token_span with no budget and full) share one."""
        key = {name: value for name, value in key_fields(self).items() if name not in REDUCTION_FIELDS}
        return {**key, **self.reduction()}


def default_data_root() -> str:
    """Folder of shared real data sets: $RECAP_DATA_ROOT, else ../shared/data next to the checkout."""
    return os.environ.get(
        "RECAP_DATA_ROOT",
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"),
    )


@dataclass
class DataConfig:
    """One data set of caption shards and how to read it.

    ``builder``: how shards are made when missing (``scenes`` = embedded default, ``flickr8k``,
    ``none`` = user shards given in ``train_shards``/``val_shards``/``test_shards``).
    Shard specs accept local paths, brace expansion, globs and any URL webdataset opens,
    several joined with ``::``.

    ``max_image_pixels``: images with more pixels (width x height) are skipped and counted as ``image_too_large``;
    this is the only limit (Pillow's own 89.5 Mpx guard is raised to it). ``exif_transpose``: apply each image's EXIF
    orientation tag (``PIL.ImageOps.exif_transpose``, counted as ``exif_rotated``). Default true: cameras store
    portrait photos sideways plus the tag, and browsers, viewers and the people who wrote the captions all see them
    upright; img2dataset's re-encoded images carry no tag, so for its shards the switch changes nothing. False
    reproduces peers that ignore the tag (torchvision's ``pil_loader``, CLIP_benchmark).
    ``max_member_bytes``: a sample with a tar member larger than this (decompressed, for .tar.gz/.bz2/.xz shards) is
    skipped unread and counted as ``member_too_large``; default 4 x the default pixel limit (256 MB: an uncompressed
    RGBA image at that limit).
    """

    name: str = setting("scenes", key=False)
    builder: str = "scenes"
    source: Optional[str] = setting(None, key="build")
    shard_dir: str = setting("cache/shards/scenes", key=False)
    train_shards: Optional[str] = setting(None, key="build")
    val_shards: Optional[str] = setting(None, key="build")
    test_shards: Optional[str] = setting(None, key="build")
    layout: CaptionLayout = setting(default_factory=project_layout)
    samples_per_shard: int = setting(1000, key="build")
    num_workers: int = 2
    shuffle_buffer: int = 1000
    resampled: bool = False
    epoch_samples: Optional[int] = None
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    exif_transpose: bool = True
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    build_seed: int = setting(0, key="build")
    build_size: Optional[int] = setting(None, key="build")
    scene_image_size: int = setting(64, key="build")

    def __post_init__(self) -> None:
        require(
            self.builder in ("scenes", "flickr8k", "none"),
            f"data.builder={self.builder!r} is unknown; choose scenes, flickr8k or none",
        )
        require(self.samples_per_shard > 0, f"data.samples_per_shard={self.samples_per_shard} must be positive")
        require(self.num_workers >= 0, f"data.num_workers={self.num_workers} must be >= 0")
        require(self.shuffle_buffer >= 0, f"data.shuffle_buffer={self.shuffle_buffer} must be >= 0")
        require(
            self.build_size is None or self.build_size > 0,
            f"data.build_size={self.build_size} must be positive or null",
        )
        require(self.scene_image_size >= 16, f"data.scene_image_size={self.scene_image_size} must be >= 16")
        require(self.max_image_pixels > 0, f"data.max_image_pixels={self.max_image_pixels} must be positive")
        require(self.max_member_bytes > 0, f"data.max_member_bytes={self.max_member_bytes} must be positive")
        require(
            not self.resampled or (self.epoch_samples or 0) > 0,
            "data.resampled=true needs data.epoch_samples > 0 (a fixed epoch length)",
        )
        require(
            self.builder != "none" or bool(self.train_shards or self.test_shards),
            "data.builder=none needs data.train_shards or data.test_shards",
        )

    def shards(self, split: str) -> str:
        """Shard spec of a split: the explicit ``{split}_shards`` or the builder's output in shard_dir."""
        require(split in ("train", "val", "test"), f"unknown split {split!r}; choose train, val or test")
        explicit = getattr(self, f"{split}_shards")
        if explicit:
            return explicit
        require(self.builder != "none", f"data.{split}_shards is not set and data.builder=none builds nothing")
        return os.path.join(self.shard_dir, f"{split}-*.tar")
