"""The identity of a captioner's weights, recorded with every caption it writes."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from harness_infra.atomic import file_sha256
from harness_infra.identity import sha256_json

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".jinja", ".txt")


def weight_files(model: str) -> List[List[Any]]:
    """[relative name, size, mtime_ns] of every weight, config and tokenizer file of a local model (``local-dir:``
    and ``NAME:PATH`` forms included): cheap enough for a stage key, and new weights written into the same folder
    change it. A hub id or tag gives [] (its revision is in the config)."""
    for candidate in (model.removeprefix("local-dir:"), model.partition(":")[2]):
        if candidate and (os.path.isdir(candidate) or os.path.isfile(candidate)):
            files = (
                [candidate]
                if os.path.isfile(candidate)
                else sorted(
                    os.path.join(root, name)
                    for root, _, names in os.walk(candidate)
                    for name in names
                    if name.endswith(WEIGHT_SUFFIXES)
                )
            )
            base = candidate if os.path.isdir(candidate) else os.path.dirname(candidate)
            return [[os.path.relpath(f, base), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files]
    return []


def weights_identity(model: str, revision: Optional[str] = None, file: Optional[str] = None) -> Dict[str, Any]:
    """{"model", "revision", "weights_sha256"}: for a local folder or file, the sha256 over every weight, config and
    tokenizer file's own sha256 (so a changed tensor changes it); for a hub id, the id and revision as given."""
    path = os.path.join(model, file) if file and os.path.isdir(model) else model
    if os.path.isfile(path):
        files = [path]
    elif os.path.isdir(path):
        files = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(path)
            for name in names
            if name.endswith(WEIGHT_SUFFIXES)
        )
    else:
        return {"model": model, "revision": revision, "weights_sha256": None}
    digest = sha256_json(
        [(os.path.relpath(f, os.path.dirname(path) if os.path.isfile(path) else path), file_sha256(f)) for f in files]
    )
    return {"model": model, "revision": revision, "file": file, "weights_sha256": digest}
