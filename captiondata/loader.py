"""Training batches from caption shards: split by rank and worker, shuffle, mix captions, transform.

Two modes:
- finite (default): every rank reads its own slice of the shard list once per epoch; the shard order
  is reshuffled per epoch with the same seed on all ranks.
- resampled (``data.resampled=true``): each worker draws shards with replacement and stops after a
  fixed number of full batches, so every rank yields exactly ``len(loader)`` batches (uneven batch
  counts deadlock DDP).
The iteration order is a deterministic function of (seed, epoch, rank, world size, workers); each sample's
augmentation is a function of (seed, shard name, key, epoch) alone (``seeded_transform``), like the mixer's caption
coin, so a run resumed mid-epoch (which re-reads and drops the epoch's first batches) sees the same crops as the
uninterrupted run, and iterating never moves the caller's global RNG.

With ``image_features`` (precomputed features of a frozen image trunk, keyed by shard and sample key) images are not
decoded: each sample's ``image`` is its feature row, and a sample without a row is skipped and counted as
``no_image_feature`` (the feature pass already counted why its image was bad).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms.functional import pil_to_tensor

from captiondata.config import DataConfig, MixConfig
from captiondata.counters import SampleCounters, summarize
from captiondata.decode import BadSample
from captiondata.mixer import choose_captions
from captiondata.reader import decode_record, expand_shards, raw_samples
from harness_infra.errors import require

log = logging.getLogger(__name__)


class FeatureLookup(Protocol):
    """What the loader needs of precomputed image features: the row of a sample (``ImageFeatures`` in memory,
    ``train_clip.frozen_features.CachedShardFeatures`` one cached shard at a time); looked up in shard order."""

    def get(self, key: str, shard: Optional[str] = None) -> Optional[torch.Tensor]:
        """The feature row of sample ``key`` of ``shard``, or None."""


@dataclass
class ImageFeatures:
    """Precomputed image features: row i of ``features`` belongs to the sample (``shards[i]``, ``keys[i]``).

    A sample's identity is its shard URL (as ``expand_shards`` spells it) and its key, everywhere it is looked up:
    user shards often restart keys at 0 in every shard, so a key alone would pair one shard's captions with another
    shard's image. Without ``shards`` (None) the keys themselves must be unique (a repeated key is a ValueError).
    """

    keys: List[str]
    features: torch.Tensor
    shards: Optional[List[str]] = None
    index: Dict[Tuple[Optional[str], str], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        require(len(self.keys) == len(self.features), f"{len(self.keys)} keys for {len(self.features)} feature rows")
        require(
            self.shards is None or len(self.shards) == len(self.keys),
            f"{len(self.keys)} keys for {len(self.shards or [])} shard names",
        )
        shards = self.shards if self.shards is not None else [None] * len(self.keys)
        self.index = {(shard, key): row for row, (shard, key) in enumerate(zip(shards, self.keys))}
        require(
            len(self.index) == len(self.keys),
            "image feature (shard, key) pairs must be unique"
            if self.shards is not None
            else "image feature keys must be unique (give shards= when keys repeat across shards)",
        )

    def get(self, key: str, shard: Optional[str] = None) -> Optional[torch.Tensor]:
        """The feature row of the sample ``key`` of ``shard`` (the shard is ignored when the features have none), or None."""
        row = self.index.get((shard if self.shards is not None else None, key))
        return None if row is None else self.features[row]


def split_normalize(transform: Callable) -> Optional[Tuple[Callable, torch.Tensor, torch.Tensor]]:
    """For a ``Compose([..., ToTensor(), Normalize(mean, std)])`` return (PIL part, mean, std), else None.

    The loader then keeps images as uint8 until the whole batch is stacked and normalises the batch in
    one vectorised pass: (x - 255 mean) / (255 std), equal to ToTensor + Normalize up to float rounding.
    """
    from torchvision import transforms

    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, transforms.Compose) or not steps or len(steps) < 2:
        return None
    to_tensor, normalize = steps[-2], steps[-1]
    if (
        not (isinstance(to_tensor, transforms.ToTensor) and isinstance(normalize, transforms.Normalize))
        or normalize.inplace
    ):
        return None
    mean = torch.as_tensor(normalize.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    std = torch.as_tensor(normalize.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    return transforms.Compose(steps[:-2]), mean, std


def draft_rule(transform: Callable) -> Optional[Callable[[int, int], int]]:
    """For a PIL transform starting (after RGB conversions) with ``RandomResizedCrop`` or ``Resize``, the JPEG draft
    rule ``(stored width, height) -> reduction factor in 1, 2, 4, 8`` that never lets draft decoding shrink the image
    below what that step then reads; None for any other transform (no draft).

    With reduction f the decoded size is W' = ceil(W / f), H' = ceil(H / f). ``Resize(s)`` (shortest side) needs
    min(W', H') >= s (``Resize((h, w))``: >= max(h, w)); ``max_size`` set: no draft. ``RandomResizedCrop(t, scale=(s0,
    s1), ratio=(r0, r1))`` crops a box of area s W' H' and aspect r, i.e. width sqrt(s W' H' r) and height
    sqrt(s W' H' / r), then resizes it to t x t: the smallest box side over all draws is sqrt(s0 W' H' min(r0, 1 / r1)),
    so f is allowed when s0 W' H' min(r0, 1 / r1) >= (T + 1)^2 with T = max(t) (+1: the box sides are rounded) and
    min(W', H') >= T (the fallback centre crop takes the whole shorter side). The same rule holds after an EXIF
    rotation (it is symmetric in W and H). Every crop is then still downscaled to the target, never upscaled more
    than without draft; the pixels differ from full decoding (``benchmarks/loader.py`` reports by how much).
    """
    from torchvision import transforms

    steps = list(getattr(transform, "transforms", [transform]))
    while steps and (
        type(steps[0]).__name__ == "MaybeConvertMode" or getattr(steps[0], "__name__", "") == "_convert_to_rgb"
    ):
        steps = steps[1:]
    if not steps:
        return None
    first = steps[0]
    if isinstance(first, transforms.RandomResizedCrop):
        target = max(first.size)
        low_scale = float(first.scale[0])
        aspect = min(float(first.ratio[0]), 1.0 / float(first.ratio[1]))

        def allowed(width: int, height: int, factor: int) -> bool:
            w, h = -(-width // factor), -(-height // factor)
            return min(w, h) >= target and low_scale * w * h * aspect >= (target + 1) ** 2
    elif isinstance(first, transforms.Resize) and first.max_size is None:
        size = first.size
        target = size if isinstance(size, int) else max(size)

        def allowed(width: int, height: int, factor: int) -> bool:
            return min(-(-width // factor), -(-height // factor)) >= target
    else:
        return None

    def rule(width: int, height: int) -> int:
        return next((f for f in (8, 4, 2) if allowed(width, height, f)), 1)

    return rule


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed determined by ``parts``."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def augment_seed(seed: int, shard: str, key: str, epoch: int) -> int:
    """The seed of one sample's augmentation: (seed, shard file name, key, epoch). A sample is (shard, key) here (keys
    often restart in every shard); the shard's file name, not its full URL, so a moved data folder augments alike."""
    return derived_seed(seed, os.path.basename(shard), key, epoch, "augment")


def seeded_transform(transform: Callable, image: Any, seed: int) -> Any:
    """``transform(image)`` with torch's CPU generator and python's ``random`` seeded by ``seed``; both states come back
    after, so the caller's RNG is unchanged (num_workers=0 runs this in the training process).

    torchvision's v1 transforms (``RandomResizedCrop``, ``RandomApply``, ``ColorJitter`` ...) draw from the global torch
    generator and take no ``torch.Generator``; ``RandomChoice``/``RandomOrder`` and timm's transforms draw from python's
    ``random``. Saving and restoring ``torch.default_generator``'s state directly (not ``torch.manual_seed``, which
    would also reseed CUDA generators, nor ``torch.random.fork_rng``, about 40x slower) costs about 7 us, python's
    ``random`` about 19 us: some 26 us per sample on this CPU, 1% of decoding one 500x375 JPEG (2.5 ms). numpy's
    global RNG is not seeded (no torchvision or open_clip transform draws from it).
    """
    generator = torch.default_generator
    torch_state, python_state = generator.get_state(), random.getstate()
    generator.manual_seed(seed)
    random.seed(seed)
    try:
        return transform(image)
    finally:
        generator.set_state(torch_state)
        random.setstate(python_state)


def shuffled(items: Iterator[Any], buffer_size: int, rng: random.Random) -> Iterator[Any]:
    """Buffer-shuffle a stream: hold ``buffer_size`` items, emit a random one as each new item arrives."""
    if buffer_size <= 1:
        yield from items
        return
    buffer: List[Any] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            index = rng.randrange(len(buffer))
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class MixedCaptionDataset(IterableDataset):
    """Iterable of collated batches {image, text, key, source} for one rank (see module docstring); with
    ``mix.positives`` = n, n texts (and sources) per image (``_collate``)."""

    def __init__(
        self,
        urls: List[str],
        data_cfg: DataConfig,
        mix_cfg: MixConfig,
        image_transform: Callable,
        tokenize: Optional[Callable[[List[str]], torch.Tensor]],
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        drop_last: bool,
        counters: SampleCounters,
        image_features: Optional[FeatureLookup] = None,
        jpeg_draft: bool = False,
    ) -> None:
        super().__init__()
        self.urls, self.data_cfg, self.mix_cfg = urls, data_cfg, mix_cfg
        self.image_transform, self.tokenize = image_transform, tokenize
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.drop_last, self.counters = seed, drop_last, counters
        self.epoch = 0
        self.image_features = image_features
        self.batch_normalize = None if image_features is not None else split_normalize(image_transform)
        if self.batch_normalize is not None:
            self.image_transform = self.batch_normalize[0]
        self.draft = draft_rule(self.image_transform) if jpeg_draft and image_features is None else None

    def batches_per_worker(self, num_workers: int) -> Optional[int]:
        """Full batches each worker yields per epoch in resampled mode (None in finite mode)."""
        if not self.data_cfg.resampled:
            return None
        per_batch = self.world_size * max(1, num_workers) * self.batch_size
        return max(1, math.ceil(self.data_cfg.epoch_samples / per_batch))

    def _shard_stream(self, worker: int, num_workers: int) -> Iterator[str]:
        """Shard URLs this (rank, worker) reads this epoch."""
        if self.data_cfg.resampled:
            rng = random.Random(derived_seed(self.seed, self.epoch, self.rank, worker, "shards"))
            while True:
                yield rng.choice(self.urls)
        order = list(self.urls)
        random.Random(derived_seed(self.seed, self.epoch, "shard-order")).shuffle(order)
        yield from order[self.rank :: self.world_size][worker::num_workers]

    def _samples(self, worker: int, num_workers: int) -> Iterator[Dict[str, Any]]:
        """Validated, caption-mixed, transformed samples for this worker; bad ones counted."""
        rng = random.Random(derived_seed(self.seed, self.epoch, self.rank, worker, "shuffle"))
        raws = raw_samples(self._shard_stream(worker, num_workers), self.counters, self.data_cfg.max_member_bytes)
        if self.image_features is not None:  # looked up in shard order, before the shuffle: one shard's entry at a time
            raws = ({**raw, "__feature__": self.image_features.get(raw["__key__"], raw["__url__"])} for raw in raws)
        for raw in shuffled(raws, self.data_cfg.shuffle_buffer, rng):
            try:
                record = decode_record(
                    raw,
                    self.data_cfg.layout,
                    self.data_cfg.max_image_pixels,
                    decode=self.image_features is None,
                    exif_transpose=self.data_cfg.exif_transpose,
                    count=self.counters.add,
                    draft=self.draft,
                )
            except BadSample as bad:
                self.counters.add(bad.reason)
                continue
            if self.image_features is not None:
                image = raw["__feature__"]
                if image is None:
                    self.counters.add("no_image_feature")
                    continue
            else:
                image = seeded_transform(
                    self.image_transform, record.image, augment_seed(self.seed, raw["__url__"], record.key, self.epoch)
                )
                if self.batch_normalize is not None:
                    image = pil_to_tensor(image)
            choices = choose_captions(record.original, record.recaptions, self.mix_cfg, record.key, self.epoch)
            for choice in choices:  # with mix.positives = n every count is per text: n per image
                self._count_choice(choice)
                if record.original is None:
                    self.counters.add("no_original")
                if not record.recaptions:
                    self.counters.add("no_recaption")
            yield {
                "image": image,
                "text": choices[0].text if len(choices) == 1 else [c.text for c in choices],
                "key": record.key,
                "source": choices[0].emitted if len(choices) == 1 else [c.emitted for c in choices],
                "shard": raw["__url__"],
            }

    def _count_choice(self, choice: Any) -> None:
        """Record the mixer's draw, what was emitted and any fallback."""
        self.counters.add("samples")
        if choice.drawn in ("original", "recap"):
            self.counters.add(f"drawn_{choice.drawn}")
        self.counters.add(f"emitted_{choice.emitted}")
        if choice.fallback:
            self.counters.add(f"fallback_to_{choice.emitted}")

    def _collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Stack images, tokenize texts (when a tokenizer is given) and keep keys and sources. With ``mix.positives`` =
        n > 1 the B images come with B x n texts and sources, image-major: rows i n ... i n + n - 1 are image i's."""
        texts = [t for s in samples for t in (s["text"] if isinstance(s["text"], list) else [s["text"]])]
        sources = [t for s in samples for t in (s["source"] if isinstance(s["source"], list) else [s["source"]])]
        images = torch.stack([s["image"] for s in samples])
        if self.batch_normalize is not None:
            _, mean, std = self.batch_normalize
            images = images.float().sub_(mean).div_(std)
        return {
            "image": images,
            "text": self.tokenize(texts) if self.tokenize is not None else texts,
            "key": [s["key"] for s in samples],
            "source": sources,
            "shard": [s["shard"] for s in samples],  # a sample is (shard, key)
        }

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        limit = self.batches_per_worker(num_workers)
        batch: List[Dict[str, Any]] = []
        produced = 0
        try:
            for sample in self._samples(worker, num_workers):
                batch.append(sample)
                if len(batch) == self.batch_size:
                    collated = self._collate(batch)
                    self.counters.flush()
                    yield collated
                    batch, produced = [], produced + 1
                    if limit is not None and produced >= limit:
                        return
            if batch and not self.drop_last:
                yield self._collate(batch)
        finally:
            self.counters.flush()


class CaptionLoader:
    """Batches of one split for one rank; ``set_epoch`` before each epoch, ``epoch_stats`` after."""

    def __init__(
        self,
        data_cfg: DataConfig,
        mix_cfg: MixConfig,
        split: str = "train",
        image_transform: Optional[Callable] = None,
        tokenize: Optional[Callable[[List[str]], torch.Tensor]] = None,
        batch_size: int = 64,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        drop_last: bool = True,
        num_workers: Optional[int] = None,
        image_features: Optional[FeatureLookup] = None,
        jpeg_draft: Optional[bool] = None,
    ) -> None:
        """``jpeg_draft``: decode JPEGs much larger than the transform needs at 1/2, 1/4 or 1/8 scale (``draft_rule``;
        changes pixels, measured in ``benchmarks/loader.py``); None takes ``data_cfg.jpeg_draft`` when the config has
        it, else off."""
        require(batch_size > 0, f"batch_size={batch_size} must be positive")
        require(0 <= rank < world_size, f"rank={rank} must be in [0, world_size={world_size})")
        self.num_workers = data_cfg.num_workers if num_workers is None else num_workers
        self.counters = SampleCounters(max_workers=max(1, self.num_workers))
        urls = expand_shards(data_cfg.shards(split))
        require(
            data_cfg.resampled or len(urls) >= world_size,
            f"data: {len(urls)} {split} shard(s) for {world_size} ranks: finite epochs give each rank whole shards (a shard is "
            f"never split), so {world_size - len(urls)} rank(s) would get no data; write at least {world_size} shards "
            f"(ideally a multiple of ranks x workers = {world_size * max(1, self.num_workers)}) or set data.resampled=true",
        )
        slots = max(1, self.num_workers) * world_size
        if not data_cfg.resampled and len(urls) < slots:
            log.warning(
                "only %d shard(s) for %d worker(s) x %d rank(s): some workers get no data; write more, smaller shards or set data.resampled=true",
                len(urls),
                max(1, self.num_workers),
                world_size,
            )
        transform = image_transform if image_transform is not None else _to_tensor
        draft = bool(getattr(data_cfg, "jpeg_draft", False)) if jpeg_draft is None else jpeg_draft
        self.dataset = MixedCaptionDataset(
            urls,
            data_cfg,
            mix_cfg,
            transform,
            tokenize,
            batch_size,
            rank,
            world_size,
            seed,
            drop_last,
            self.counters,
            image_features,
            draft,
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: shard order, shuffle and caption draws all depend on it."""
        self.dataset.epoch = epoch

    def __len__(self) -> int:
        per_worker = self.dataset.batches_per_worker(self.num_workers)
        if per_worker is None:
            raise TypeError(
                "batches per epoch are unknown in finite mode; set data.resampled=true for a fixed epoch length"
            )
        return per_worker * max(1, self.num_workers)

    def iterate(self, skip_batches: int = 0) -> Iterator[Dict[str, Any]]:
        """Batches of the current epoch, dropping the first ``skip_batches`` (resume inside an epoch)."""
        self.counters.reset()
        # the workers' base seed from a generator of our own: by default DataLoader draws it from the global torch RNG,
        # which would move the trainer's RNG once per epoch (and at a different point in a resumed run)
        generator = torch.Generator().manual_seed(
            derived_seed(self.dataset.seed, self.dataset.epoch, self.dataset.rank, "workers")
        )
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None,
            generator=generator,
        )
        for index, batch in enumerate(loader):
            if index >= skip_batches:
                yield batch
        stats = self.epoch_stats()  # this rank's view; the trainer's monitor logs the epoch once, over all ranks
        log.debug(
            "epoch %d: %d samples, original fraction %s (p = P(original)), skipped %s",
            self.dataset.epoch,
            stats["samples"],
            _fmt(stats["original_fraction"]),
            stats["skipped"] or "none",
        )

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return self.iterate()

    def epoch_totals(self) -> Dict[str, int]:
        """Raw counter totals of the last epoch on this rank (sum over ranks with all_reduce for DDP)."""
        return self.counters.totals()

    def epoch_stats(self) -> Dict[str, Any]:
        """Samples, skips by reason, realised original fraction and fallbacks of the last epoch."""
        return summarize(self.counters.totals())


def _to_tensor(image: Any) -> torch.Tensor:
    """Default transform: PIL RGB -> float tensor in [0, 1]."""
    return pil_to_tensor(image).float().div_(255.0)


def _fmt(value: Optional[float]) -> str:
    """A fraction for the log, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"
