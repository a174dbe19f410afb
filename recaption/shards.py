"""Recaption caption shards, exactly once: input shard -> output shard of the same name, same keys, every member
passed through untouched, plus ``KEY.{name}.txt`` (the recaption) and ``KEY.{name}.json`` (its provenance).

The unit of work is one shard. Its output tar is written through the one atomic writer and renamed into place whole,
then its completion file ``{shard}.done.json`` (counts, failed keys, caption statistics) is written last. So a run
killed at any point leaves each shard either finished or absent, and the next run redoes only the absent ones: no key
is lost or written twice, and greedy captions equal an uninterrupted run's. A sample that fails (undecodable image,
generation error, empty or over-length output, server error, ...) is kept without a recaption and counted by reason
in the completion file. Transient failures (``TRANSIENT_FAILURES``: generation errors, server errors, timeouts) are
captioned again by the next run (``retry_failed``), which reads the previous output shard and rewrites it; samples
captioned before are never captioned twice, and permanent failures (an undecodable image, an over-length greedy
caption) are not retried, since greedy decoding would fail them the same way. While a retry rewrites a shard its
completion record waits as ``.retry.json``, so other ranks do not take the old record for the new shard.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from captiondata.captions import extract_captions
from captiondata.counters import SKIP_REASONS, SampleCounters
from captiondata.decode import BadSample, decode_image, decode_json
from captiondata.reader import DEFAULT_MAX_PIXELS, raw_samples
from captiondata.writer import write_raw_shard
from harness_infra.atomic import atomic_write_json
from harness_infra.progress import Progress
from recaption.captioner import TRANSIENT_FAILURES, Caption, Captioner, Item

log = logging.getLogger(__name__)
DONE_SUFFIX = ".done.json"


def done_path(out_path: str) -> str:
    """The completion file of an output shard."""
    return out_path[: -len(".tar")] + DONE_SUFFIX if out_path.endswith(".tar") else out_path + DONE_SUFFIX


def retry_path(out_path: str) -> str:
    """Where a shard's completion record waits while a retry rewrites the shard (so other ranks keep waiting)."""
    return done_path(out_path)[: -len(DONE_SUFFIX)] + ".retry.json"


def _read_record(record_path: str, out_path: str) -> Optional[Dict[str, Any]]:
    """The JSON record at ``record_path`` when it and the shard both exist, else None."""
    if not (os.path.isfile(record_path) and os.path.isfile(out_path)):
        return None
    with open(record_path, encoding="utf-8") as handle:
        return json.load(handle)


def read_retry(out_path: str) -> Optional[Dict[str, Any]]:
    """The completion record of a finished shard whose retry was interrupted (None when there is none)."""
    return _read_record(retry_path(out_path), out_path)


def read_done(out_path: str) -> Optional[Dict[str, Any]]:
    """The completion record of an output shard, None when the shard is not finished."""
    return _read_record(done_path(out_path), out_path)


@dataclass
class ShardStats:
    """What one shard's recaptioning did: counts, failures by reason, failed keys, tokens, caption statistics."""

    samples: int = 0
    captioned: int = 0
    captioned_this_pass: int = 0
    reused: int = 0
    failed: Dict[str, int] = field(default_factory=dict)
    failed_keys: List[str] = field(default_factory=list)
    transient_keys: List[str] = field(default_factory=list)
    tokens: int = 0
    truncated: int = 0
    seconds: float = 0.0
    word_histogram: Dict[str, int] = field(default_factory=dict)
    vocabulary: List[str] = field(default_factory=list)


def original_caption(raw: Dict[str, Any], layout: Any) -> Optional[str]:
    """The sample's alt-text under the data set's layout (None when absent or undecodable)."""
    try:
        return extract_captions(raw, layout)["original"]
    except BadSample:
        return None


def json_field(raw: Dict[str, Any], name: str) -> Optional[str]:
    """A string field img2dataset stores in ``KEY.json`` (``url``; ``sha256`` of the downloaded bytes with
    ``--compute_hash sha256``); None when the member, the field or a string value is absent."""
    try:
        meta = decode_json(raw["json"]) if "json" in raw else None
    except BadSample:
        return None
    value = meta.get(name) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def sample_meta(raw: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``meta`` mapping the project's shard writer stores in ``KEY.json``; None when absent or undecodable."""
    try:
        stored = decode_json(raw["json"]) if "json" in raw else None
    except BadSample:
        return None
    meta = stored.get("meta") if isinstance(stored, dict) else None
    return meta if isinstance(meta, dict) else None


def to_item(raw: Dict[str, Any], layout: Any, max_pixels: int, exif_transpose: bool = True) -> Item:
    """Decode one raw sample for a captioner with the one image decoder (the image is None when missing or
    undecodable; EXIF orientation applied per ``data.exif_transpose``)."""
    image_bytes = next((raw[m] for m in layout.image_members if m in raw), None)
    try:
        image = decode_image(image_bytes, max_pixels, exif_transpose) if image_bytes is not None else None
    except BadSample:
        image = None
    return Item(
        raw["__key__"],
        image,
        original_caption(raw, layout),
        image_bytes,
        json_field(raw, "url"),
        json_field(raw, "sha256"),
        sample_meta(raw),
    )


def batches(samples: Iterator[Dict[str, Any]], size: int) -> Iterator[List[Dict[str, Any]]]:
    """Consecutive lists of ``size`` samples (the last one shorter)."""
    batch: List[Dict[str, Any]] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class ShardRecaptioner:
    """Recaption shards with one loaded captioner; images decode in ``num_workers`` threads while the model generates."""

    def __init__(
        self,
        captioner: Captioner,
        cfg: Any,
        layout: Any,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        exif_transpose: bool = True,
    ) -> None:
        self.captioner, self.cfg, self.layout, self.max_pixels = captioner, cfg, layout, max_pixels
        self.exif_transpose = exif_transpose
        self.caption_member, self.provenance_member = f"{cfg.name}.txt", f"{cfg.name}.json"
        self.pool = ThreadPoolExecutor(max_workers=cfg.num_workers) if cfg.num_workers > 0 else None

    def _decode(self, batch: List[Dict[str, Any]]) -> List[Item]:
        """Items of a batch (in a worker thread when there are workers)."""
        return [to_item(raw, self.layout, self.max_pixels, self.exif_transpose) for raw in batch]

    def _decoded(self, todo: Iterator[List[Dict[str, Any]]]) -> Iterator[Tuple[List[Dict[str, Any]], List[Item]]]:
        """(raw batch, items) with the next batch decoding while the caller generates on this one."""
        pending: Optional[Tuple[List[Dict[str, Any]], Any]] = None
        for batch in todo:
            job = self.pool.submit(self._decode, batch) if self.pool else self._decode(batch)
            if pending is not None:
                yield pending[0], pending[1].result() if isinstance(pending[1], Future) else pending[1]
            pending = (batch, job)
        if pending is not None:
            yield pending[0], pending[1].result() if isinstance(pending[1], Future) else pending[1]

    def provenance(self, item: Item, caption: Caption) -> bytes:
        """The ``KEY.{name}.json`` member: captioner identity, effective prompt, generation facts, time, outcome."""
        record = {
            **self.captioner.identity,
            "prompt_used": self.cfg.prompt_for(item.original),
            "conditioned_on_original": bool(self.cfg.condition_on_original and item.original),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tokens": caption.tokens,
            "truncated": caption.truncated,
            "status": "ok" if caption.text is not None else caption.reason,
        }
        return json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8")

    def status(self, raw: Dict[str, Any]) -> Optional[str]:
        """The outcome a previous pass recorded for a sample ("ok" or a failure reason; None when never captioned)."""
        if self.provenance_member not in raw:
            return None
        try:
            return json.loads(raw[self.provenance_member]).get("status")
        except (ValueError, AttributeError):
            return None

    def outcome(self, raw: Dict[str, Any]) -> Optional[str]:
        """What a previous pass left for a sample: its recorded status, except that an "ok" whose caption member is
        gone is a ``generation_error`` (transient: captioned again on retry); None when never captioned."""
        status = self.status(raw)
        return "generation_error" if status == "ok" and self.caption_member not in raw else status

    def recaption_shard(self, in_url: str, out_path: str, progress: Optional[Progress] = None) -> ShardStats:
        """Write ``out_path`` (atomically, then its completion file) from ``in_url``, or retry the transient failures of
        a previous output of it; returns the shard's statistics (over every sample of the output, not this pass).
        ``progress`` counts the samples of each batch as they are written."""
        started = time.perf_counter()
        previous = read_done(out_path) or read_retry(out_path)
        retry = previous is not None  # the previous output holds every sample; only transient failures are redone
        if retry and os.path.isfile(done_path(out_path)):
            os.replace(done_path(out_path), retry_path(out_path))  # other ranks wait while this shard is rewritten
        source = out_path if retry else in_url
        stats = ShardStats()
        counters = SampleCounters(max_workers=0)
        words: Counter = Counter()
        vocabulary: set = set()
        generated = 0

        def annotated() -> Iterator[Dict[str, Any]]:
            nonlocal generated
            todo = batches(raw_samples([source], counters), self.cfg.batch_size)
            for batch, items in self._decoded(todo):
                need = [n for n, raw in enumerate(batch) if not retry or self.outcome(raw) in TRANSIENT_FAILURES]
                captions = self.captioner.caption([items[n] for n in need]) if need else []
                for n, caption in zip(need, captions):
                    raw = batch[n]
                    if retry and caption.text is None and caption.reason == self.outcome(raw):
                        continue  # failed again the same way: keep the old record, so an unchanged shard stays identical
                    raw.pop(self.caption_member, None)
                    raw[self.provenance_member] = self.provenance(items[n], caption)
                    if caption.text is not None:
                        raw[self.caption_member] = caption.text.encode("utf-8")
                        generated += 1
                for raw in batch:
                    self.count(raw, stats, words, vocabulary)
                    yield raw
                if progress is not None:
                    progress.update(len(batch))

        shard = write_raw_shard(out_path, annotated())
        stats.captioned_this_pass, stats.seconds = generated, round(time.perf_counter() - started, 3)
        stats.reused = stats.samples - generated - len(stats.failed_keys)
        skipped = {
            k: v
            for k, v in counters.totals().items()
            if v and k in SKIP_REASONS  # raw_samples counts only the shard-level losses among them
        }
        stats.word_histogram, stats.vocabulary = dict(words), sorted(vocabulary)
        atomic_write_json(
            done_path(out_path),
            {"source": in_url, "shard": shard, "retried": retry, "input_skipped": skipped, **stats.__dict__},
        )
        if os.path.isfile(retry_path(out_path)):
            os.unlink(retry_path(out_path))
        if skipped:
            log.warning(
                "%s: the input shard %s lost samples before captioning: %s", os.path.basename(out_path), in_url, skipped
            )
        if stats.failed:
            transient = sum(n for reason, n in stats.failed.items() if reason in TRANSIENT_FAILURES)
            log.warning(
                "%s: %d of %d samples failed (%s); kept without a recaption; %d transient failures are retried on the next run",
                os.path.basename(out_path),
                len(stats.failed_keys),
                stats.samples,
                stats.failed,
                transient,
            )
        return stats

    def count(self, raw: Dict[str, Any], stats: "ShardStats", words: Counter, vocabulary: set) -> None:
        """Add one output sample to the shard's statistics, from its recorded outcome (so a retry counts every sample)."""
        stats.samples += 1
        status = self.outcome(raw)
        if status != "ok":
            reason = status or "generation_error"  # never captioned, or an "ok" whose caption is gone
            stats.failed[reason] = stats.failed.get(reason, 0) + 1
            stats.failed_keys.append(raw["__key__"])
            stats.transient_keys += [raw["__key__"]] if reason in TRANSIENT_FAILURES else []
            return
        record = json.loads(raw[self.provenance_member])
        stats.captioned += 1
        stats.tokens += int(record.get("tokens") or 0)
        stats.truncated += int(bool(record.get("truncated")))
        text = raw[self.caption_member].decode("utf-8")
        words[str(len(text.split()))] += 1
        vocabulary.update(text.lower().split())

    def close(self) -> None:
        """Stop the decoding threads."""
        if self.pool is not None:
            self.pool.shutdown()
