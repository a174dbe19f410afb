"""On-disk embedding cache: one ``.pt`` file per key (atomic writes; loads with ``weights_only=True``)."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import torch

from harness_infra.atomic import atomic_torch_save
from harness_infra.identity import sha256_json

log = logging.getLogger(__name__)


class EmbeddingCache:
    """Files ``{folder}/{kind}-{sha256(key)[:32]}.pt`` holding a dict of tensors and plain Python values.

    The key (a JSON-able dict: model id, data set fingerprint, preprocessing or tokenizer identity, ...) is
    stored in the file and checked on load, so a hash collision or a stale file is never used silently.
    ``folder=None`` disables the cache.
    """

    def __init__(self, folder: Optional[str]) -> None:
        self.folder = folder

    def path(self, kind: str, key: Dict[str, Any]) -> Optional[str]:
        """File of a cache entry (None when the cache is disabled)."""
        return None if self.folder is None else os.path.join(self.folder, f"{kind}-{sha256_json(key)[:32]}.pt")

    def load(self, kind: str, key: Dict[str, Any], quiet: bool = False) -> Optional[Dict[str, Any]]:
        """The stored payload, or None when absent, unreadable or stored under a different key (``quiet``: a hit is
        logged at debug level, for callers that load many entries)."""
        path = self.path(kind, key)
        if path is None or not os.path.isfile(path):
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt or foreign file is a cache miss, never a crash
            log.warning("ignoring unreadable cache file %s: %s", path, exc)
            return None
        if not isinstance(payload, dict) or payload.get("key") != sha256_json(key):
            log.warning("ignoring cache file %s: stored under a different key", path)
            return None
        (log.debug if quiet else log.info)("cache hit %s", path)
        return payload

    def save(self, kind: str, key: Dict[str, Any], payload: Dict[str, Any]) -> Optional[str]:
        """Write ``payload`` (plus the key hash) through a temporary file and ``os.replace``."""
        path = self.path(kind, key)
        if path is None:
            return None
        atomic_torch_save({**payload, "key": sha256_json(key)}, path)
        return path
