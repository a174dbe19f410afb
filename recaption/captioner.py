"""The one ``Captioner`` protocol every backend implements, the item it captions and the result it returns.

A captioner takes a batch of ``Item`` (the decoded image, or None when it could not be decoded, plus the sample's
key, original alt-text, raw image bytes and source URL) and returns one ``Caption`` per item, in order: the text, or
None with the failure reason (``FAILURE_REASONS``). It never raises for one bad sample: a batch-wide error (a server
that is down) fails every item of the batch with that reason, and the stage counts and retries them on its next run.
An answer that would fail every sample alike (a refused key, a model the server does not have) is a one-line
``ConfigError`` instead, which stops the stage before any completion file is written.
Backends are registered in ``BACKENDS`` (``module:factory``) and built by ``build_captioner(cfg)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol

from PIL import Image

FAILURE_REASONS = (
    "undecodable_image",  # the image member is missing, corrupt or over the pixel limit
    "missing_original",  # a text-only rewrite with no alt-text to rewrite
    "not_in_parquet",  # precomputed captions: no row for this key/sha256/url
    "generation_error",  # the model raised while generating this batch
    "server_error",  # an HTTP error after every retry (429, 5xx), another 4xx for this item, or a malformed response
    "timeout",  # no answer within the timeout after every retry
    "empty_output",  # generated text empty after stripping
    "over_length",  # more words than recaption.max_words
)
TRANSIENT_FAILURES = ("generation_error", "server_error", "timeout")  # may succeed when tried again; the others cannot
BACKENDS = {
    "precomputed": "recaption.backends.precomputed:PrecomputedCaptioner",
    "hf": "recaption.backends.hf:HFCaptioner",
    "vllm": "recaption.backends.vllm:VLLMCaptioner",
    "openai": "recaption.backends.openai_api:OpenAICaptioner",
    "coca": "recaption.backends.coca:CoCaCaptioner",
    "rewrite": "recaption.backends.rewrite:RewriteCaptioner",
    "faithfulness": "recaption.backends.faithfulness:FaithfulnessCaptioner",
}


@dataclass
class Item:
    """One sample to caption: ``image`` is RGB (None when undecodable); ``image_bytes`` the member as stored;
    ``url`` and ``source_sha256`` what img2dataset recorded in ``KEY.json`` (the source URL and the SHA-256 of the
    bytes as downloaded, before its re-encoding); ``meta`` the sample's stored metadata (``KEY.json``'s ``meta``: the
    scene graph of a scenes sample), None when it has none."""

    key: str
    image: Optional[Image.Image]
    original: Optional[str] = None
    image_bytes: Optional[bytes] = None
    url: Optional[str] = None
    source_sha256: Optional[str] = None
    meta: Optional[Dict[str, Any]] = None


@dataclass
class Caption:
    """A captioner's answer for one item: ``text`` (None on failure, with ``reason``), generated ``tokens``, and
    ``truncated`` when generation stopped at ``max_new_tokens`` rather than at an end token."""

    text: Optional[str]
    reason: Optional[str] = None
    tokens: int = 0
    truncated: bool = False

    @staticmethod
    def failed(reason: str) -> "Caption":
        """A failure with one of ``FAILURE_REASONS``; ValueError for any other reason."""
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown caption failure reason {reason!r}: one of {', '.join(FAILURE_REASONS)}")
        return Caption(None, reason)


class Captioner(Protocol):
    """What the stage needs of a backend: ``identity`` (captioner id, weights id, generation parameters: recorded as
    every caption's provenance) and ``caption(items) -> captions`` (same length, same order)."""

    identity: Dict[str, Any]

    def caption(self, items: List[Item]) -> List[Caption]: ...


def build_captioner(cfg: Any) -> Captioner:
    """The configured backend (``recaption.backend``), loaded and ready."""
    module, _, name = BACKENDS[cfg.backend].partition(":")
    return getattr(importlib.import_module(module), name)(cfg)


def generation_identity(cfg: Any) -> Dict[str, Any]:
    """The generation parameters every backend records: prompt, conditioning, greedy decoding, token cap."""
    return {
        "prompt": cfg.prompt,
        "condition_on_original": cfg.condition_on_original,
        "conditioned_prompt": cfg.conditioned_prompt if cfg.condition_on_original else None,
        "decoding": "greedy",
        "max_new_tokens": cfg.max_new_tokens,
    }


def finish_text(text: Optional[str], cfg: Any, tokens: int = 0, truncated: bool = False) -> Caption:
    """A generated text checked the same way for every backend: stripped, empty and over-length are failures."""
    text = (text or "").strip()
    if not text:
        return Caption.failed("empty_output")
    if cfg.max_words is not None and len(text.split()) > cfg.max_words:
        return Caption.failed("over_length")
    return Caption(text, None, tokens, truncated)
