"""Glue between the trainer and batch sources: ``captiondata.loader.CaptionLoader`` or an in-memory stand-in.

A batch source follows CaptionLoader's contract: ``set_epoch(e)``, ``iterate(skip_batches=k)`` yielding
``{"image": float [B,3,H,W], "text": long [B,L], ...}`` in an order fixed by (seed, epoch, rank, world size),
and ``epoch_stats()``. ``DataStream`` turns it into micro-batches across epoch boundaries and keeps the
(epoch, batch-in-epoch) position that checkpoints store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol

import torch

from training.distributed import DistEnv, all_ranks_have, gather_objects

log = logging.getLogger(__name__)
Batch = Dict[str, Any]


class BatchSource(Protocol):
    """What the trainer needs from a loader (CaptionLoader's contract)."""

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (order and caption draws depend on it)."""

    def iterate(self, skip_batches: int = 0) -> Iterator[Batch]:
        """This epoch's batches after the first ``skip_batches``."""

    def epoch_stats(self) -> Dict[str, Any]:
        """Samples, skipped counts by reason and realised original fraction of the last epoch."""


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

        return CaptionLoader(data_cfg, mix_cfg, split="train", image_transform=request.image_transform,
                             tokenize=request.tokenize, batch_size=request.batch_size, rank=request.rank,
                             world_size=request.world_size, seed=request.seed, drop_last=True,
                             image_features=request.image_features)

    return make


def batches_per_epoch(source: BatchSource) -> Optional[int]:
    """Batches per epoch on this rank when the source knows it, else None."""
    try:
        return len(source)  # type: ignore[arg-type]
    except TypeError:
        return None


class InMemoryBatches:
    """Batches from tensors held in memory, with CaptionLoader's contract (tests, smoke runs, compute benchmarks).

    Each epoch is a permutation drawn from (seed, epoch); rank r takes every world_size-th sample of it.
    """

    def __init__(self, images: torch.Tensor, texts: torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
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


def synthetic_pairs(num_samples: int, image_size: int, tokenize: Callable, seed: int = 0, classes: int = 16) -> Dict[str, torch.Tensor]:
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


def synthetic_factory(num_samples: int, seed: int = 0) -> LoaderFactory:
    """Factory of in-memory synthetic sources, regenerated at each stage's image size."""

    def make(request: LoaderRequest) -> BatchSource:
        """Synthetic pairs at the requested image size for this rank."""
        pairs = synthetic_pairs(num_samples, request.image_size, request.tokenize, seed=seed)
        return InMemoryBatches(pairs["image"], pairs["text"], request.batch_size, request.rank, request.world_size, seed=request.seed)

    return make


def summed_epoch_stats(source: BatchSource, env: DistEnv) -> Dict[str, Any]:
    """Epoch stats over all ranks when the source exposes raw totals (CaptionLoader), else this rank's."""
    if env.distributed and hasattr(source, "epoch_totals"):
        from captiondata.counters import summarize

        totals: Dict[str, int] = {}
        for rank_totals in gather_objects(source.epoch_totals(), env):
            for name, value in rank_totals.items():
                totals[name] = totals.get(name, 0) + value
        return summarize(totals)
    return source.epoch_stats()


class DataStream:
    """Micro-batches across epochs; ``epoch``/``batch_in_epoch`` is the position a checkpoint stores."""

    def __init__(self, source: BatchSource, env: DistEnv, epoch: int, batch_in_epoch: int,
                 on_epoch_end: Callable[[int, Dict[str, Any]], None]) -> None:
        self.source, self.env, self.on_epoch_end = source, env, on_epoch_end
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch
        self.synchronize = env.distributed and batches_per_epoch(source) is None
        self._iterator: Optional[Iterator[Batch]] = None

    def _start_epoch(self) -> None:
        """Open the current epoch at the current batch index."""
        self.source.set_epoch(self.epoch)
        self._iterator = iter(self.source.iterate(skip_batches=self.batch_in_epoch))

    def _next_in_epoch(self) -> Optional[Batch]:
        """The next batch of this epoch, or None when any rank has run out (ranks stop together)."""
        batch = next(self._iterator, None)
        if self.synchronize and not all_ranks_have(batch is not None, self.env):
            return None
        return batch

    def next_batch(self) -> Batch:
        """The next micro-batch, rolling over to the next epoch when this one ends."""
        for _ in range(2):
            if self._iterator is None:
                self._start_epoch()
            batch = self._next_in_epoch()
            if batch is not None:
                self.batch_in_epoch += 1
                return batch
            produced = self.batch_in_epoch
            self.on_epoch_end(self.epoch, summed_epoch_stats(self.source, self.env))
            self.epoch, self.batch_in_epoch, self._iterator = self.epoch + 1, 0, None
            if produced == 0:
                break
        raise RuntimeError(f"epoch {self.epoch - 1} produced no full batch: the data set is smaller than one batch per rank")

    def epoch_end_partial(self) -> None:
        """Close a partly read epoch (at a stage end): report it and move the position to the next epoch."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None
        if self.batch_in_epoch == 0:
            return
        self.on_epoch_end(self.epoch, summed_epoch_stats(self.source, self.env))
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def take(self, count: int) -> List[Batch]:
        """``count`` micro-batches (one optimizer step's worth)."""
        return [self.next_batch() for _ in range(count)]
