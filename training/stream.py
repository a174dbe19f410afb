"""Micro-batches from a batch source across epoch boundaries, with the (epoch, batch-in-epoch) position a checkpoint
stores; shared by the trainers (train_clip, train_dit).

A batch source follows ``captiondata.loader.CaptionLoader``'s contract: ``set_epoch(e)``, ``iterate(skip_batches=k)``
yielding batches in an order fixed by (seed, epoch, rank, world size), and ``epoch_stats()``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol

from harness_infra.errors import ConfigError
from training.distributed import DistEnv, all_ranks_have, gather_objects

Batch = Dict[str, Any]

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    """What the trainer needs from a loader (CaptionLoader's contract)."""

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (order and caption draws depend on it)."""

    def iterate(self, skip_batches: int = 0) -> Iterator[Batch]:
        """This epoch's batches after the first ``skip_batches``."""

    def epoch_stats(self) -> Dict[str, Any]:
        """Samples, skipped counts by reason and realised original fraction of the last epoch."""


def batches_per_epoch(source: BatchSource) -> Optional[int]:
    """Batches per epoch on this rank when the source knows it, else None."""
    try:
        return len(source)  # type: ignore[arg-type]
    except TypeError:
        return None


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


def trained_counts(batch: Batch) -> Dict[str, int]:
    """{"samples": n, "original"/"recap"/"concat": n} of one batch the trainer takes (sources from the mixer's
    ``batch["source"]`` when the loader provides it)."""
    sources = batch.get("source")
    if sources is None:
        first = next((v for v in batch.values() if hasattr(v, "__len__")), [])
        return {"samples": len(first)}
    counts = {"samples": len(sources)}
    for source in sources:
        counts[source] = counts.get(source, 0) + 1
    return counts


def with_trained(stats: Dict[str, Any], trained: Dict[str, int]) -> Dict[str, Any]:
    """The loader's epoch stats with what was TRAINED on top: ``samples`` = trained samples (every rank),
    ``samples_read`` = samples the loader read and counted (more: prefetched batches, the batches of ranks that
    stopped early because another rank ran out, the end of a stage), ``original_fraction`` = trained originals /
    trained samples (``read_original_fraction`` keeps the loader's own), ``concat_fraction`` likewise."""
    out = {
        **stats,
        "samples_read": stats.get("samples"),
        "read_original_fraction": stats.get("original_fraction"),
        "samples": trained.get("samples", 0),
    }
    n = out["samples"]
    if any(k in trained for k in ("original", "recap", "concat")):
        out["original_fraction"] = trained.get("original", 0) / n if n and not trained.get("concat") else None
        out["concat_fraction"] = trained.get("concat", 0) / n if n else None
    return out


class DataStream:
    """Micro-batches across epochs; ``epoch``/``batch_in_epoch`` is the position a checkpoint stores.

    Epoch reports (``on_epoch_end(epoch, stats)``) count what was trained, summed over ranks (``with_trained``):
    batches handed out by ``next_batch`` since the epoch was opened in this process (after a resume, from the resume
    point on, and the record says ``resumed_at_batch``), next to what the loader read. A resume at the very end of an
    epoch (the checkpoint was taken after its last batch) reports it with nothing trained; the monitor keeps the
    record the process before the resume wrote, if it got to write it (``RunMonitor.epoch_end``). A source that knows
    its length is not read again for that.
    """

    def __init__(
        self,
        source: BatchSource,
        env: DistEnv,
        epoch: int,
        batch_in_epoch: int,
        on_epoch_end: Callable[[int, Dict[str, Any]], None],
    ) -> None:
        self.source, self.env, self.on_epoch_end = source, env, on_epoch_end
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch
        self.synchronize = env.distributed and batches_per_epoch(source) is None
        self._iterator: Optional[Iterator[Batch]] = None
        self._trained: Dict[str, int] = {}
        self._resumed_at = batch_in_epoch  # the first epoch opens here; later ones at 0

    def _epoch_stats(self) -> Dict[str, Any]:
        """The closing epoch's report over all ranks; resets the trained counts."""
        trained: Dict[str, int] = {}
        parts = gather_objects(self._trained, self.env) if self.env.distributed else [self._trained]
        for part in parts:
            for name, value in part.items():
                trained[name] = trained.get(name, 0) + value
        self._trained = {}
        stats = with_trained(summed_epoch_stats(self.source, self.env), trained)
        if (
            self._resumed_at
        ):  # the batches before the resume point were trained by the process before it, uncounted here
            stats["resumed_at_batch"] = self._resumed_at
        return stats

    def _start_epoch(self) -> None:
        """Open the current epoch at the current batch index (the next epoch when a resume lands on the end of one
        whose length the source knows)."""
        length = batches_per_epoch(self.source) if self._resumed_at else None
        if length is not None and self.batch_in_epoch >= length:
            if self.batch_in_epoch > length:
                log.warning(
                    "resumed at batch %d of epoch %d, which has %d batches here: the data, batch size or rank count "
                    "changed since the checkpoint",
                    self.batch_in_epoch,
                    self.epoch,
                    length,
                )
            self._skip_resumed_end()
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
                for name, value in trained_counts(batch).items():
                    self._trained[name] = self._trained.get(name, 0) + value
                return batch
            produced = self.batch_in_epoch
            stats = self._epoch_stats()
            self.on_epoch_end(self.epoch, stats)
            self.epoch, self.batch_in_epoch, self._iterator, self._resumed_at = self.epoch + 1, 0, None, 0
            if produced == 0:
                break
        ranks = f" over {self.env.world_size} ranks" if self.env.distributed else ""
        raise ConfigError(
            f"epoch {self.epoch - 1} gave no full batch{' to some rank' if ranks else ''}: the loader read "
            f"{stats.get('samples_read')} valid samples{ranks} (skipped {stats.get('skipped') or 'none'}); every rank "
            "needs at least one full batch per epoch: lower the batch size, add data, or set data.resampled=true"
        )

    def _skip_resumed_end(self) -> None:
        """Close the epoch a resume landed on the end of, unread: report it with nothing trained (the monitor keeps an
        earlier report of it) and move to the next epoch."""
        log.info(
            "resumed at the end of epoch %d (batch %d): going on with epoch %d",
            self.epoch,
            self.batch_in_epoch,
            self.epoch + 1,
        )
        self.on_epoch_end(
            self.epoch,
            {
                "samples": 0,
                "samples_read": 0,
                "skipped_total": 0,
                "skipped": {},
                "original_fraction": None,
                "resumed_at_batch": self.batch_in_epoch,
            },
        )
        self._trained = {}
        self.epoch, self.batch_in_epoch, self._resumed_at = self.epoch + 1, 0, 0

    def epoch_end_partial(self) -> None:
        """Close a partly read epoch (at a stage end): report it and move the position to the next epoch."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None
        if self.batch_in_epoch == 0:
            return
        self.on_epoch_end(self.epoch, self._epoch_stats())
        self.epoch, self.batch_in_epoch, self._resumed_at = self.epoch + 1, 0, 0

    def take(self, count: int) -> List[Batch]:
        """``count`` micro-batches (one optimizer step's worth)."""
        return [self.next_batch() for _ in range(count)]
