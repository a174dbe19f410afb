"""Glue between the trainer and batch sources: ``captiondata.loader.CaptionLoader`` or an in-memory stand-in.

A batch source follows CaptionLoader's contract: ``set_epoch(e)``, ``iterate(skip_batches=k)`` yielding
``{"image": float [B,3,H,W], "text": long [B,L], ...}`` in an order fixed by (seed, epoch, rank, world size),
and ``epoch_stats()``. ``DataStream`` turns it into micro-batches across epoch boundaries and keeps the
(epoch, batch-in-epoch) position that checkpoints store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List

import torch

from training.stream import Batch, BatchSource, DataStream, batches_per_epoch, summed_epoch_stats  # noqa: F401  (the trainer's stream)

log = logging.getLogger(__name__)


@dataclass
class LoaderRequest:
    """What a loader factory is asked for at the start of each stage."""

    stage: int
    image_size: int
    image_transform: Callable
    tokenize: Callable[[List[str]], torch.Tensor]
    batch_size: int
    rank: int
    world_size: int
    seed: int
    image_features: Any = None  # captiondata.loader.ImageFeatures: serve frozen-trunk features instead of images


LoaderFactory = Callable[[LoaderRequest], BatchSource]


def caption_loader_factory(data_cfg: Any, mix_cfg: Any) -> LoaderFactory:
    """Factory of CaptionLoaders over the configured train shards (captiondata imported lazily)."""

    def make(request: LoaderRequest) -> BatchSource:
        """A CaptionLoader for this rank and stage."""
        from captiondata.loader import CaptionLoader

        return CaptionLoader(
            data_cfg,
            mix_cfg,
            split="train",
            image_transform=request.image_transform,
            tokenize=request.tokenize,
            batch_size=request.batch_size,
            rank=request.rank,
            world_size=request.world_size,
            seed=request.seed,
            drop_last=True,
            image_features=request.image_features,
        )

    return make


class InMemoryBatches:
    """Batches from tensors held in memory, with CaptionLoader's contract (tests, smoke runs, compute benchmarks).

    Each epoch is a permutation drawn from (seed, epoch); rank r takes every world_size-th sample of it.
    """

    def __init__(
        self,
        images: torch.Tensor,
        texts: torch.Tensor,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        self.images, self.texts = images, texts
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.epoch, self.served = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its permutation)."""
        self.epoch, self.served = epoch, 0

    def __len__(self) -> int:
        return (len(self.images) // self.world_size) // self.batch_size

    def iterate(self, skip_batches: int = 0) -> Iterator[Batch]:
        """Batches of the current epoch after the first ``skip_batches``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.images), generator=generator)[self.rank :: self.world_size]
        for index in range(skip_batches, len(self)):
            rows = order[index * self.batch_size : (index + 1) * self.batch_size]
            self.served += len(rows)
            yield {"image": self.images[rows], "text": self.texts[rows]}

    def epoch_stats(self) -> Dict[str, Any]:
        """Samples served this epoch on this rank (no skips, no caption mixing)."""
        return {"samples": self.served, "skipped_total": 0, "skipped": {}, "original_fraction": None}


def synthetic_pairs(
    num_samples: int, image_size: int, tokenize: Callable, seed: int = 0, classes: int = 16
) -> Dict[str, torch.Tensor]:
    """Learnable toy pairs: class k = an image with a class-specific colour pattern + the caption "pattern number k"."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (num_samples,), generator=generator)
    palette = torch.rand(classes, 3, 1, 1, generator=generator)
    freq = torch.arange(1, classes + 1).float().view(classes, 1, 1)
    grid = torch.linspace(0, 3.14159, image_size)
    waves = torch.sin(freq * grid.view(1, -1, 1) + freq * grid.view(1, 1, -1))  # [classes, H, W]
    images = palette[labels] * (0.5 + 0.5 * waves[labels].unsqueeze(1))
    images = images + 0.05 * torch.randn(images.shape, generator=generator)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    captions = [f"pattern number {words[k // 10]} {words[k % 10]}" for k in labels.tolist()]
    return {"image": (images - 0.5) / 0.25, "text": tokenize(captions)}
