"""Recaption every shard of the configured splits into an output folder, under any process layout.

``recaption_split`` is the local engine: one process, or torchrun ranks that split the shards (shard i goes to rank
i mod world size) and each write their own. ``recaption.ray_data`` is the cluster engine over the same per-shard
function. Either way the output names follow the sorted input shards (``{split}-{index:06d}.tar``), every output
shard ends with its completion file, and ``finish_split`` (rank 0, once every shard is complete) writes the split's
manifest and the run's statistics: images/s, generated tokens/s, words per caption, distinct words, empty and
truncated counts, failures by reason.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional

from captiondata.reader import expand_shards
from harness_infra.atomic import atomic_write_json, clear_partial_files
from harness_infra.progress import Progress
from harness_infra.ranks import rank, wait_until, world_size
from recaption.captioner import Captioner, build_captioner
from recaption.shards import ShardRecaptioner, done_path, read_done

log = logging.getLogger(__name__)


def output_path(out_dir: str, split: str, index: int) -> str:
    """The output shard of the ``index``-th input shard of ``split``."""
    return os.path.join(out_dir, f"{split}-{index:06d}.tar")


def pending(done: Optional[Dict[str, Any]], retry_failed: bool = True) -> bool:
    """True when a shard must be (re)done: never finished, or finished with transient failures to retry."""
    return done is None or (retry_failed and bool(done.get("transient_keys")))


def recaption_split(
    urls: List[str],
    out_dir: str,
    split: str,
    cfg: Any,
    layout: Any,
    max_pixels: int,
    make_captioner: Callable[[Any], Captioner] = build_captioner,
    shard_rank: Optional[int] = None,
    shard_world: Optional[int] = None,
    exif_transpose: bool = True,
) -> int:
    """Recaption this rank's share of ``urls`` into ``out_dir``; returns how many shards it (re)wrote.

    The captioner is loaded only when some shard of this rank's share is pending (a resumed run that finds everything
    done loads nothing)."""
    shard_rank = rank() if shard_rank is None else shard_rank
    shard_world = world_size() if shard_world is None else shard_world
    mine = [(i, url) for i, url in enumerate(urls) if i % shard_world == shard_rank]
    todo = [(i, url) for i, url in mine if pending(read_done(output_path(out_dir, split, i)), cfg.retry_failed)]
    if not todo:
        return 0
    worker = ShardRecaptioner(make_captioner(cfg), cfg, layout, max_pixels, exif_transpose)
    # shards have no length up front: the total is estimated from the shards finished so far
    progress = Progress(
        f"recaption {split} (rank {shard_rank})" if shard_world > 1 else f"recaption {split}", unit="image"
    )
    try:
        for done_shards, (i, url) in enumerate(todo, 1):
            clear_shard_partials(output_path(out_dir, split, i))
            stats = worker.recaption_shard(url, output_path(out_dir, split, i), progress)
            progress.set_total(round(progress.count / done_shards * len(todo)))
            log.info(
                "%s: %d samples, %d captioned now, %d kept, failed %s, %.1f images/s",
                os.path.basename(output_path(out_dir, split, i)),
                stats.samples,
                stats.captioned_this_pass,
                stats.reused,
                stats.failed or "none",
                stats.captioned_this_pass / max(stats.seconds, 1e-9),
            )
    finally:
        progress.close()
        worker.close()
    return len(todo)


def clear_shard_partials(out_path: str) -> None:
    """Remove the temporary files a killed writer of this shard left (only this shard's owner ever writes them):
    ``harness_infra.atomic.clear_partial_files`` for the names ``.tmp-*{stem}.*`` of the shard and its completion file."""
    folder, name = os.path.split(out_path)
    clear_partial_files(folder, name[: -len(".tar")] + ".")


def wait_for_split(out_dir: str, split: str, count: int, timeout_s: float = 24 * 3600.0) -> None:
    """Block until every output shard of ``split`` has its completion file (the other ranks' shares)."""
    wait_until(
        lambda: all(os.path.isfile(done_path(output_path(out_dir, split, i))) for i in range(count)),
        f"recaption of {split} in {out_dir}",
        timeout_s,
    )


def finish_split(out_dir: str, split: str, count: int, seconds: float) -> Dict[str, Any]:
    """Write ``{split}-manifest.json`` (shard names, counts, sha256s) and return the split's statistics."""
    dones = [read_done(output_path(out_dir, split, i)) for i in range(count)]
    shards = [d["shard"] for d in dones]
    atomic_write_json(
        os.path.join(out_dir, f"{split}-manifest.json"),
        {"prefix": split, "samples": sum(s["count"] for s in shards), "shards": shards},
    )
    return split_statistics(dones, seconds)


def split_statistics(dones: List[Dict[str, Any]], seconds: float) -> Dict[str, Any]:
    """Totals over the completion files of a split: counts, failures by reason, throughput and caption statistics.

    ``images_per_s`` and ``tokens_per_s`` use this run's wall time ``seconds`` and only the captions generated by this
    run's passes over each shard (``captioned``), so a resumed run reports its own speed."""
    failed: Dict[str, int] = {}
    input_skipped: Dict[str, int] = {}
    histogram: Dict[int, int] = {}
    vocabulary: set = set()
    for done in dones:
        for reason, n in done["failed"].items():
            failed[reason] = failed.get(reason, 0) + n
        for reason, n in done.get("input_skipped", {}).items():
            input_skipped[reason] = input_skipped.get(reason, 0) + n
        for words, n in done["word_histogram"].items():
            histogram[int(words)] = histogram.get(int(words), 0) + n
        vocabulary.update(done["vocabulary"])
    captions = sum(histogram.values())
    ordered = sorted(histogram.items())
    median, seen = None, 0
    for words, n in ordered:
        seen += n
        if seen * 2 >= captions:
            median = words
            break
    captioned = sum(d["captioned_this_pass"] for d in dones)
    tokens = sum(d["tokens"] for d in dones)
    return {
        "shards": len(dones),
        "samples": sum(d["samples"] for d in dones),
        "with_recaption": captions,
        "failed": failed,
        "failed_total": sum(failed.values()),
        "transient_failures": sum(len(d["transient_keys"]) for d in dones),
        "input_skipped": input_skipped,
        "empty": failed.get("empty_output", 0),
        "truncated": sum(d["truncated"] for d in dones),
        "words_per_caption_mean": sum(w * n for w, n in ordered) / captions if captions else None,
        "words_per_caption_median": median,
        "distinct_words": len(vocabulary),
        "generated_this_run": captioned,
        "images_per_s": captioned / seconds if seconds > 0 else None,
        "tokens_per_s": tokens / seconds if seconds > 0 and tokens else None,
        "seconds": round(seconds, 2),
    }


def recaption_data(
    spec_by_split: Dict[str, str],
    out_dir: str,
    cfg: Any,
    layout: Any,
    max_pixels: int,
    make_captioner: Callable[[Any], Captioner] = build_captioner,
    exif_transpose: bool = True,
) -> Dict[str, Any]:
    """Recaption the configured splits (local engine, torchrun-aware); on rank 0 wait for every rank and return
    {split: statistics}; other ranks return {} once their share is written."""
    started = time.perf_counter()
    listing = {split: sorted(expand_shards(spec_by_split[split])) for split in cfg.splits}
    for split, urls in listing.items():
        recaption_split(urls, out_dir, split, cfg, layout, max_pixels, make_captioner, exif_transpose=exif_transpose)
    if rank() != 0:
        return {}
    stats = {}
    for split, urls in listing.items():
        wait_for_split(out_dir, split, len(urls))
        stats[split] = finish_split(out_dir, split, len(urls), time.perf_counter() - started)
    return stats


def load_manifest(out_dir: str, split: str) -> Dict[str, Any]:
    """A finished split's manifest."""
    with open(os.path.join(out_dir, f"{split}-manifest.json"), encoding="utf-8") as handle:
        return json.load(handle)
