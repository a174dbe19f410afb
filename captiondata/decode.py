"""Validating decoders for tar members: images (with a decompression-bomb guard), UTF-8 text, JSON.

Every failure raises ``BadSample(reason)`` with a reason from ``counters.SKIP_REASONS`` so the
reader can skip and count it.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

from PIL import Image


class BadSample(Exception):
    """A sample that must be skipped; ``reason`` is one of counters.SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode image bytes to RGB; refuse empty, undecodable, truncated or over-``max_pixels`` images."""
    if not data:
        raise BadSample("empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise BadSample("image_too_large", f"{width}x{height} > {max_pixels} pixels")
            image.load()
    except BadSample:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadSample("image_too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as exc:
        raise BadSample("corrupt_image", str(exc)) from None
    return image.convert("RGB")


def decode_text(data: bytes) -> str:
    """Strict UTF-8 decode (a leading BOM is dropped)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadSample("non_utf8_text", str(exc)) from None


def decode_json(data: bytes) -> Any:
    """Strict UTF-8 JSON decode."""
    try:
        return json.loads(decode_text(data))
    except json.JSONDecodeError as exc:
        raise BadSample("bad_json", str(exc)) from None
