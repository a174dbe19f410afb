"""Validating decoders for tar members and image files: images (with a decompression-bomb guard), UTF-8 text, JSON.

``decode_image`` is the project's one image decoder: the shard reader (training, recaptioning, frozen features,
diagnostics) and every evaluation set (image folders, Flickr8k, caption folders, webdataset tars) call it, so an
image means the same pixels in training and in evaluation.

Every failure raises ``BadSample(reason)`` with a reason from ``counters.SKIP_REASONS`` so the
reader can skip and count it; every conversion of a decodable image is reported through ``count`` with a name
from ``counters.DECODE_EVENTS``.
"""

from __future__ import annotations

import io
import json
import struct
import threading
from typing import Any, Callable, Dict, Optional

import numpy as np
from PIL import ExifTags, Image, ImageOps

from captiondata.config import DEFAULT_MAX_PIXELS
DECODER_VERSION = "rgb8/2"  # bump when decode_image maps some bytes to different pixels (it enters evaluation identities)
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
Count = Optional[Callable[[str], Any]]

_PILLOW_LIMIT_LOCK = threading.Lock()


class BadSample(Exception):
    """A sample that must be skipped; ``reason`` is one of counters.SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def allow_pixels(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb guard no stricter than ``max_pixels``.

    Pillow refuses images above 2 x ``Image.MAX_IMAGE_PIXELS`` (89.5 Mpx by default) inside ``Image.open`` and while
    loading some formats (GIF frames, TIFF tiles); the configured limit is the one that counts, so the global is
    raised to it (never lowered, under a lock: safe from threads; the raise is visible to other Pillow users in this
    process, which then share the configured limit). ``decode_image`` refuses anything above ``max_pixels`` itself.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is None or current >= max_pixels:
        return
    with _PILLOW_LIMIT_LOCK:
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
            Image.MAX_IMAGE_PIXELS = int(max_pixels)


def decoding_identity(max_pixels: int, exif_transpose: bool) -> Dict[str, Any]:
    """What decides the pixels ``decode_image`` returns (for data set identities and cache keys)."""
    return {"decoder": DECODER_VERSION, "max_pixels": int(max_pixels), "exif_transpose": bool(exif_transpose)}


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1..8; 1 when absent or unreadable: a broken EXIF block never drops an image)."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
        return int(value) if value in range(1, 9) else 1
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error):
        return 1


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """An 8-bit ``L`` image from a 16-bit, 32-bit integer or float single-channel image, scaled (never clipped white).

    ``I;16*`` (16-bit samples, how Pillow opens 16-bit grayscale PNG and TIFF) and ``I`` (32-bit integers; Pillow's mode
    for 16-bit PNGs in older versions, read as 16-bit samples and clipped to [0, 65535]): round(v * 255 / 65535).
    ``F`` (float32): values in [0, 1] scaled by 255, otherwise taken as [0, 255] and clipped; NaN -> 0.
    """
    array = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        out = np.clip(np.rint(values), 0, 255)
    else:
        values = np.clip(array.astype(np.int64), 0, 65535)
        out = (values * 255 + 32767) // 65535
    return Image.fromarray(out.astype(np.uint8), "L")


def _has_alpha(image: Image.Image) -> bool:
    """True for modes with an alpha channel and for images with a transparency colour (PNG tRNS, GIF)."""
    return image.mode in ALPHA_MODES or "transparency" in image.info


def _to_rgb(image: Image.Image, count: Count) -> Image.Image:
    """8-bit RGB; each conversion counted once (``converted_high_bit_depth``, ``converted_alpha``, ``converted_mode``).

    Transparency is composited over white (what a browser shows on a white page; vLLM's ``rgba_to_rgb`` default); an
    alpha channel that is fully opaque is just dropped (counted as ``converted_mode``). Other modes (``L``, ``1``,
    ``P``, ``CMYK``, ``YCbCr``, ...) go through Pillow's ``convert("RGB")``.
    """
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in HIGH_BIT_DEPTH_MODES:
        if count:
            count("converted_high_bit_depth")
        return _high_bit_depth_to_l(image).convert("RGB")
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            if count:
                count("converted_alpha")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        image = rgba
    if count:
        count("converted_mode")
    return image.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True, count: Count = None) -> Image.Image:
    """Decode image bytes to 8-bit RGB; refuse empty, undecodable, truncated or over-``max_pixels`` images.

    data: the encoded file. max_pixels: width x height above which the image is refused (``image_too_large``); it is
    the only limit (Pillow's own 89.5 Mpx guard is raised to it, see ``allow_pixels``). exif_transpose: apply the EXIF
    orientation tag (``PIL.ImageOps.exif_transpose``; counted as ``exif_rotated``). count: called with the name of
    each conversion (``counters.DECODE_EVENTS``), e.g. ``SampleCounters.add``. High bit depth is scaled to 8 bits and
    transparency composited over white (``_to_rgb``). Raises BadSample(``empty_image`` | ``corrupt_image`` |
    ``image_too_large``).
    """
    if not data:
        raise BadSample("empty_image")
    allow_pixels(max_pixels)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise BadSample("image_too_large", f"{width}x{height} > {max_pixels} pixels")
        image.load()
        if exif_transpose and _orientation(image) != 1:
            image = ImageOps.exif_transpose(image)
            if count:
                count("exif_rotated")
        return _to_rgb(image, count)
    except BadSample:
        raise
    except Image.DecompressionBombError as exc:
        raise BadSample("image_too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.UnidentifiedImageError) as exc:
        raise BadSample("corrupt_image", str(exc)) from None


def decode_text(data: bytes) -> str:
    """Strict UTF-8 decode (a leading BOM is dropped). Raises BadSample("non_utf8_text")."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadSample("non_utf8_text", str(exc)) from None


def decode_json(data: bytes) -> Any:
    """Strict UTF-8 JSON decode. Raises BadSample("non_utf8_text" | "bad_json")."""
    try:
        return json.loads(decode_text(data))
    except json.JSONDecodeError as exc:
        raise BadSample("bad_json", str(exc)) from None
