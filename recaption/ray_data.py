"""The cluster engine: Ray Data maps the shard list through an actor pool of captioners, one per GPU.

The dataset is the list of (split, index, input shard); ``map_batches`` with a callable class gives an actor pool
(``recaption.ray_actors`` actors, ``ray_gpus_per_actor`` GPUs each): every actor loads the captioner once and runs the
same exactly-once per-shard function as the local engine (``ShardRecaptioner.recaption_shard``), so a Ray job killed
midway resumes shard by shard too, and the output is the same key -> caption set as one process. The driver then
writes each split's manifest. ``ray_address``: null starts a local Ray instance; ``auto`` joins a running cluster.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List

from captiondata.reader import expand_shards
from recaption.shards import read_done
from recaption.stage import clear_shard_partials, finish_split, output_path, pending

log = logging.getLogger(__name__)


class ShardActor:
    """One captioner per actor; each call recaptions the shards of its batch (one row each)."""

    def __init__(self, cfg: Any, layout: Any, max_pixels: int, out_dir: str, exif_transpose: bool = True) -> None:
        from recaption.captioner import build_captioner
        from recaption.shards import ShardRecaptioner

        self.out_dir = out_dir
        self.worker = ShardRecaptioner(build_captioner(cfg), cfg, layout, max_pixels, exif_transpose)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, List[Any]]:
        done = {"split": [], "index": [], "captioned": [], "failed": []}
        for split, index, url in zip(batch["split"], batch["index"], batch["url"]):
            clear_shard_partials(output_path(self.out_dir, str(split), int(index)))
            stats = self.worker.recaption_shard(str(url), output_path(self.out_dir, str(split), int(index)))
            for name, value in (
                ("split", str(split)),
                ("index", int(index)),
                ("captioned", stats.captioned_this_pass),
                ("failed", len(stats.failed_keys)),
            ):
                done[name].append(value)
        return done


def recaption_with_ray(
    spec_by_split: Dict[str, str], out_dir: str, cfg: Any, layout: Any, max_pixels: int, exif_transpose: bool = True
) -> Dict[str, Any]:
    """Recaption the configured splits with a Ray Data actor pool; returns {split: statistics} like the local engine."""
    import ray

    started = time.perf_counter()
    listing = {split: sorted(expand_shards(spec_by_split[split])) for split in cfg.splits}
    rows = [
        {"split": split, "index": i, "url": url}
        for split, urls in listing.items()
        for i, url in enumerate(urls)
        if pending(read_done(output_path(out_dir, split, i)), cfg.retry_failed)
    ]
    if rows:
        owns = not ray.is_initialized()
        if owns:
            ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        try:
            data = ray.data.from_items(rows, override_num_blocks=len(rows))
            results = data.map_batches(
                ShardActor,
                fn_constructor_args=(cfg, layout, max_pixels, out_dir, exif_transpose),
                batch_size=1,
                concurrency=min(cfg.ray_actors, len(rows)),
                num_gpus=cfg.ray_gpus_per_actor or None,
                batch_format="numpy",
            ).take_all()
            log.info("ray: %d shards recaptioned by %d actors", len(results), min(cfg.ray_actors, len(rows)))
        finally:
            if owns:
                ray.shutdown()
    return {
        split: finish_split(out_dir, split, len(urls), time.perf_counter() - started) for split, urls in listing.items()
    }
