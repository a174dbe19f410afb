"""Shared pieces of the recaption tests: tiny input shards, reading output shards, a tiny VLM built once."""

from __future__ import annotations

import glob
import io
import json
import tarfile
from typing import Dict, List

from conftest import make_records

from captiondata.writer import ShardWriter


def write_input(folder: str, n: int, per_shard: int, prefix: str = "train") -> str:
    """``n`` records (distinct random images, alt-text, one recaption) in shards of ``per_shard``; returns the glob."""
    writer = ShardWriter(folder, prefix, max_count=per_shard)
    writer.write_all(make_records(n))
    writer.close()
    return f"{folder}/{prefix}-*.tar"


def members(spec: str) -> Dict[str, Dict[str, bytes]]:
    """key -> {suffix: bytes} over every shard of a glob, asserting no key appears twice."""
    out: Dict[str, Dict[str, bytes]] = {}
    for path in sorted(glob.glob(spec)):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, suffix = member.name.partition(".")
                out.setdefault(key, {})
                assert suffix not in out[key], f"{member.name} appears twice"
                out[key][suffix] = tar.extractfile(member).read()
    return out


def captions(spec: str, name: str = "llava") -> Dict[str, str]:
    """key -> recaption text of every sample that has one."""
    return {k: v[f"{name}.txt"].decode("utf-8") for k, v in members(spec).items() if f"{name}.txt" in v}


def provenance(spec: str, name: str = "llava") -> List[dict]:
    """Every sample's provenance record."""
    return [json.loads(v[f"{name}.json"]) for v in members(spec).values() if f"{name}.json" in v]


def tar_of(entries: Dict[str, bytes], path: str) -> None:
    """A tar with the given members (for hand-made bad inputs)."""
    with tarfile.open(path, "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
