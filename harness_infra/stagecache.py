"""Content-keyed stage folders: ``{out_root}/{stage}/{label}-{hash}`` with a completion marker written last.

The hash covers the stage's own resolved config and its inputs' hashes, so a stage whose output is
complete is skipped, a failed stage (no marker) runs again, and changing p re-runs training and
evaluation but not the shard build.

Which config fields enter a key is declared on the field itself (``setting(..., key=...)``), not in exclusion
lists kept beside the stage: ``key=True`` (the default) for anything that changes a stage's output, ``key=False``
for where and how fast it runs (folders, devices, logging, resume), ``key="build"`` for what only the stage that
builds an artefact reads (shard-builder settings), whose consumers see it through the artefact's fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from typing import Any, Dict, List, Optional

from harness_infra.atomic import atomic_write_json
from harness_infra.identity import sha256_json

MARKER = "_COMPLETE.json"
HASH_LENGTH = 16  # hex digits of a stage folder's key hash
KEY_METADATA = "stage_key"
KEY_ROLES = (True, False, "build")


def setting(default: Any = dataclasses.MISSING, *, key: Any = True, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that declares whether it enters stage keys (see the module docstring for ``key``)."""
    if key not in KEY_ROLES:
        raise ValueError(f"setting(key={key!r}): choose True, False or 'build'")
    return dataclasses.field(default=default, default_factory=default_factory, metadata={KEY_METADATA: key})


def key_role(field: dataclasses.Field) -> Any:
    """A field's declared role in stage keys (True when undeclared)."""
    return field.metadata.get(KEY_METADATA, True)


def key_fields(obj: Any, builder: bool = False) -> Any:
    """The canonical part of a config that determines a stage's output: fields with ``key=True`` (and with
    ``key="build"`` when ``builder``), recursing into nested dataclasses, lists and dicts."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: key_fields(getattr(obj, f.name), builder)
            for f in dataclasses.fields(obj)
            if key_role(f) is True or (builder and key_role(f) == "build")
        }
    if isinstance(obj, dict):
        return {str(k): key_fields(v, builder) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [key_fields(v, builder) for v in obj]
    return obj


def canonical(obj: Any) -> Any:
    """A JSON-ready copy of dataclasses, dicts, lists and scalars with sorted keys."""
    if dataclasses.is_dataclass(obj):
        return {f.name: canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    return obj


def content_hash(obj: Any, length: int = HASH_LENGTH) -> str:
    """Hex SHA-256 prefix of the canonical JSON of ``obj`` (dataclasses included)."""
    return sha256_json(canonical(obj))[:length]


def complete_folders(out_root: str, stage: str, label: str) -> List[str]:
    """The complete (marker present) folders ``{out_root}/{stage}/{label}-{hash}`` of one label, sorted, absolute:
    every finished run of that label, whatever its key (another label that merely starts with ``label`` is not one)."""
    folder = os.path.join(out_root, stage)
    pattern = re.compile(re.escape(label) + f"-[0-9a-f]{{{HASH_LENGTH}}}")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return [
        os.path.abspath(os.path.join(folder, name))
        for name in names
        if pattern.fullmatch(name) and os.path.isfile(os.path.join(folder, name, MARKER))
    ]


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

    @property
    def lock_path(self) -> str:
        """The lock file beside the folder (``harness_infra.locks.exclusive``): one builder at a time across jobs."""
        return self.path + ".lock"

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
