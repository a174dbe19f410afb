"""Identities that key the embedding cache and label records: model weights, preprocessing, tokenizer, files."""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Sequence

if TYPE_CHECKING:  # torch is imported where a model is fingerprinted, so configs compose without loading it
    import torch


def sha256_json(obj: Any) -> str:
    """sha256 hex digest of ``obj`` serialised as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")).hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every state_dict entry: name, dtype, shape and raw bytes (same weights -> same id)."""
    import torch

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


def file_identity(path: str, root: Optional[str] = None, mtime: bool = False) -> List[Any]:
    """[name relative to ``root`` (else basename), size in bytes] of a local file, plus its mtime in ns with ``mtime``;
    [the spec, -1] for a remote URL (``scheme://``) or a ``pipe:`` command. A missing local file raises."""
    local = path[len("file://"):] if path.startswith("file://") else path
    if "://" in local or local.startswith("pipe:"):
        return [path, -1]
    name = os.path.relpath(local, root) if root else os.path.basename(local)
    stat = os.stat(local)
    return [name.replace(os.sep, "/"), stat.st_size] + ([stat.st_mtime_ns] if mtime else [])


def files_fingerprint(paths: Iterable[str], root: Optional[str] = None) -> str:
    """sha256 over the sorted ``file_identity`` (name, size) of each path; remote URLs contribute their URL only."""
    return sha256_json(sorted(tuple(file_identity(path, root)) for path in paths))
