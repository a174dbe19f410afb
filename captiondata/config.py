"""Typed configuration for caption shards and the caption mixer (validated at start-up)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from harness_infra.errors import require
from harness_infra.stagecache import setting

STRATEGIES = ("mix", "original", "recap", "concat")
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
    """

    strategy: str = "mix"
    p: float = 0.8
    seed: int = 0
    concat_separator: str = " "

    def __post_init__(self) -> None:
        require(
            self.strategy in STRATEGIES,
            f"mix.strategy={self.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}",
        )
        require(
            0.0 <= float(self.p) <= 1.0, f"mix.p={self.p} is outside [0, 1] (p = probability of the ORIGINAL caption)"
        )

    @property
    def p_original(self) -> Optional[float]:
        """The probability of the ORIGINAL caption per sample this strategy realises: ``p`` for ``mix``, 1 for
        ``original``, 0 for ``recap``, None for ``concat`` (both captions in every text)."""
        return {"mix": float(self.p), "original": 1.0, "recap": 0.0}.get(self.strategy)


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
