"""The data stage: build the configured data set's caption shards into a keyed folder, or fingerprint user shards.

Key: the builder's own settings (``captiondata.build.builder_settings``: everything that determines the shard
bytes). Its output (``DataInfo``): ``fingerprint`` (shard names, counts and SHA-256s, ``shard_fingerprint``; for user
shards names and sizes), which is what every later stage keys on instead of the build settings. Under torchrun rank 0 builds, the others wait.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

from captiondata.build import build_shards, builder_settings
from captiondata.config import DataConfig
from captiondata.reader import expand_shards
from harness_infra.stagecache import content_hash
from pipeline.infos import DataInfo
from pipeline.registry import RunContext, Stage


def shard_fingerprint(manifests: Dict[str, Any]) -> str:
    """Hash of every split's shard names, sample counts and SHA-256s (``manifests``: split -> a shard manifest with
    ``shards: [{name, count, sha256}]``, as the shard writer and the recaption stage write them)."""
    return content_hash(
        {split: [(s["name"], s["count"], s["sha256"]) for s in m["shards"]] for split, m in sorted(manifests.items())}
    )


def _stat_identity(url: str) -> tuple:
    """(size, mtime_ns, ctime_ns) of a local file, (None,) for a remote URL."""
    if not os.path.isfile(url):
        return (None,)
    stat = os.stat(url)
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def user_shard_fingerprint(data: DataConfig) -> Dict[str, Any]:
    """Shard specs and a fingerprint of user-supplied shards: local files by name, size, mtime_ns and ctime_ns (an
    in-place rewrite changes ctime even when mtime is set back; hashing terabytes of shards per run would not scale),
    remote ones by name."""
    listing = {}
    for split in ("train", "val", "test"):
        spec = getattr(data, f"{split}_shards")
        if spec:
            urls = expand_shards(spec)
            listing[split] = [(u, *_stat_identity(u)) for u in urls]
    return {"shards": {s: getattr(data, f"{s}_shards") for s in listing}, "fingerprint": content_hash(listing)}


def key(ctx: RunContext) -> Optional[Dict[str, Any]]:
    """The builder's settings; None for user shards (nothing to build, fingerprinted on every run)."""
    return None if ctx.cfg.data.builder == "none" else builder_settings(ctx.cfg.data)


def run(ctx: RunContext, out_dir: Optional[str]) -> DataInfo:
    """Build the shards into ``out_dir`` (or fingerprint user shards when there is no folder)."""
    if out_dir is None:
        user = user_shard_fingerprint(ctx.cfg.data)
        return DataInfo(fingerprint=user["fingerprint"], shards=user["shards"])
    built = build_shards(dataclasses.replace(ctx.cfg.data, shard_dir=out_dir), overwrite=True)
    return DataInfo(
        fingerprint=shard_fingerprint(built["manifests"]),
        samples={split: m["samples"] for split, m in built["manifests"].items()},
        build_seconds=built["build_seconds"],
    )


def shard_dir(info: DataInfo) -> Optional[str]:
    """The absolute folder of built shards (the stage's own folder), None for user shards."""
    return info.out_dir


def data_for_training(cfg: Any, info: DataInfo) -> DataConfig:
    """The data config pointing at the built shards (user shards as configured)."""
    folder = shard_dir(info)
    return dataclasses.replace(cfg.data, shard_dir=folder) if folder else cfg.data


STAGE = Stage(
    name="data", needs=(), output=DataInfo, key=key, run=run, ranks="rank0_builds", label=lambda ctx: ctx.cfg.data.name
)
