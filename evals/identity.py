"""Identities that key the embedding cache and label records: model weights, preprocessing, tokenizer, files."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Optional, Sequence

import torch


def sha256_json(obj: Any) -> str:
    """sha256 hex digest of ``obj`` serialised as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")).hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every state_dict entry: name, dtype, shape and raw bytes (same weights -> same id)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode("utf-8"))
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def preprocess_identity(preprocess: Any) -> str:
    """The preprocessing pipeline as text: torchvision's Compose repr lists every transform and its parameters."""
    return repr(preprocess).replace("\n", " ")


def tokenizer_identity(tokenizer: Any, context_length: int) -> str:
    """Tokenizer class (and HF name when present) plus the context length used."""
    kind = f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"
    inner = getattr(getattr(tokenizer, "tokenizer", None), "name_or_path", None)
    return f"{kind}{'(' + inner + ')' if inner else ''}:context_length={context_length}"


def texts_fingerprint(texts: Sequence[str]) -> str:
    """sha256 over the texts in order (NUL-separated) and their count."""
    digest = hashlib.sha256(f"{len(texts)}\0".encode("utf-8"))
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def files_fingerprint(paths: Iterable[str], root: Optional[str] = None) -> str:
    """sha256 over sorted (name relative to ``root`` (else basename), size in bytes) of local files.

    Remote URLs (``scheme://``) contribute their URL only.
    """
    entries = []
    for path in paths:
        if "://" in path and not path.startswith("file://"):
            entries.append((path, -1))
            continue
        local = path[len("file://"):] if path.startswith("file://") else path
        name = os.path.relpath(local, root) if root else os.path.basename(local)
        entries.append((name.replace(os.sep, "/"), os.path.getsize(local)))
    return sha256_json(sorted(entries))
