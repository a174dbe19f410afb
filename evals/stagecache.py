"""Content-keyed stage folders: ``{out_root}/{stage}/{label}-{hash}`` with a completion marker written last.

The hash covers the stage's own resolved config and its inputs' hashes, so a stage whose output is
complete is skipped, a failed stage (no marker) runs again, and changing p re-runs training and
evaluation but not the shard build.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Dict, Optional

from captiondata.atomic import atomic_write_json
from evals.identity import sha256_json

MARKER = "_COMPLETE.json"


def canonical(obj: Any) -> Any:
    """A JSON-ready copy of dataclasses, dicts, lists and scalars with sorted keys."""
    if dataclasses.is_dataclass(obj):
        return {f.name: canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    return obj


def content_hash(obj: Any, length: int = 16) -> str:
    """Hex SHA-256 prefix of the canonical JSON of ``obj`` (dataclasses included)."""
    return sha256_json(canonical(obj))[:length]


class StageDir:
    """One stage output folder; ``complete`` once its marker exists."""

    def __init__(self, out_root: str, stage: str, label: str, key: Any) -> None:
        self.stage, self.key = stage, canonical(key)
        self.hash = content_hash(self.key)
        self.path = os.path.abspath(os.path.join(out_root, stage, f"{label}-{self.hash}"))

    @property
    def marker(self) -> str:
        """Path of the completion marker."""
        return os.path.join(self.path, MARKER)

    def complete(self) -> bool:
        """True when the stage finished for this exact key."""
        return os.path.isfile(self.marker)

    def info(self) -> Dict[str, Any]:
        """What the finished stage recorded in its marker."""
        with open(self.marker, encoding="utf-8") as handle:
            return json.load(handle)

    def prepare(self, force: bool = False) -> None:
        """Create the folder; with ``force`` drop a finished result first (re-run on request)."""
        if force and os.path.isdir(self.path):
            shutil.rmtree(self.path)
        os.makedirs(self.path, exist_ok=True)
        atomic_write_json(os.path.join(self.path, "stage-key.json"), self.key)

    def finish(self, info: Dict[str, Any]) -> Dict[str, Any]:
        """Write the completion marker (last) with the stage's outputs and provenance."""
        atomic_write_json(self.marker, {"stage": self.stage, "hash": self.hash, **info})
        return self.info()

    def read_or_none(self) -> Optional[Dict[str, Any]]:
        """The marker's content, or None when incomplete."""
        return self.info() if self.complete() else None
