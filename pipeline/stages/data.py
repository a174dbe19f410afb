"""The data stage: build the configured data set's caption shards into a keyed folder, or fingerprint user shards.

Key: the builder's own settings (``captiondata.build.builder_settings``: everything that determines the shard
bytes). Its info: ``fingerprint`` (shard names, counts and SHA-256s; for user shards names and sizes), which is what
every later stage keys on instead of the build settings. Under torchrun rank 0 builds, the others wait.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

from captiondata.build import build_shards, builder_settings
from captiondata.config import DataConfig
from captiondata.reader import expand_shards
from harness_infra.stagecache import content_hash
from pipeline.registry import RunContext, Stage


def shard_fingerprint(manifests: Dict[str, Any]) -> str:
    """Hash of every split's shard names, sample counts and SHA-256s."""
    return content_hash({split: [(s["name"], s["count"], s["sha256"]) for s in m["shards"]] for split, m in sorted(manifests.items())})


def user_shard_fingerprint(data: DataConfig) -> Dict[str, Any]:
    """Shard specs and a fingerprint (local: names and sizes; remote: names) of user-supplied shards."""
    listing = {}
    for split in ("train", "val", "test"):
        spec = getattr(data, f"{split}_shards")
        if spec:
            urls = expand_shards(spec)
            listing[split] = [(u, os.path.getsize(u) if os.path.isfile(u) else None) for u in urls]
    return {"shards": {s: getattr(data, f"{s}_shards") for s in listing}, "fingerprint": content_hash(listing)}


def key(ctx: RunContext) -> Optional[Dict[str, Any]]:
    """The builder's settings; None for user shards (nothing to build, fingerprinted on every run)."""
    return None if ctx.cfg.data.builder == "none" else builder_settings(ctx.cfg.data)


def run(ctx: RunContext, out_dir: Optional[str]) -> Dict[str, Any]:
    """Build the shards into ``out_dir`` (or fingerprint user shards when there is no folder)."""
    if out_dir is None:
        return {"shard_dir": None, **user_shard_fingerprint(ctx.cfg.data)}
    built = build_shards(dataclasses.replace(ctx.cfg.data, shard_dir=out_dir), overwrite=True)
    return {"fingerprint": shard_fingerprint(built["manifests"]),
            "samples": {split: m["samples"] for split, m in built["manifests"].items()}, "build_seconds": built["build_seconds"]}


def shard_dir(info: Dict[str, Any]) -> Optional[str]:
    """The absolute folder of built shards (the stage's own folder), None for user shards."""
    return info.get("out_dir")


def data_for_training(cfg: Any, info: Dict[str, Any]) -> DataConfig:
    """The data config pointing at the built shards (user shards as configured)."""
    folder = shard_dir(info)
    return dataclasses.replace(cfg.data, shard_dir=folder) if folder else cfg.data


STAGE = Stage(name="data", needs=(), key=key, run=run, ranks="rank0_builds", label=lambda ctx: ctx.cfg.data.name)
