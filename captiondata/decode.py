"""Validating decoders for tar members and image files: images (with a decompression-bomb guard), UTF-8 text, JSON.

``decode_image`` is the project's one image decoder: the shard reader (training, recaptioning, frozen features,
diagnostics) and every evaluation set (image folders, Flickr8k, caption folders, webdataset tars) call it, so an
image means the same pixels in training and in evaluation.

Plain 8-bit JPEGs (baseline or progressive Huffman, 1 or 3 components, no Adobe/MPF segment, no EXIF block when EXIF
orientation is applied, ending in an EOI marker) are decoded by torchvision's libjpeg-turbo (``torchvision.io.
decode_jpeg``) instead of Pillow's: the same library, ISLOW IDCT and fancy upsampling, so the same pixels (checked
once per process on an embedded 4:2:0 odd-sized image, and by tests on CIFAR-10, Flickr8k and synthetic encodings),
without Pillow's per-image Python marker parsing: measured 38 us vs 230 us per CIFAR-10 32 px JPEG. 8-bit grey or
RGB PNGs without transparency go through torchvision's libpng the same way (lossless: any correct decoder agrees). Anything else,
and any image libjpeg warns about, goes through Pillow as before (which decides whether it is corrupt).

``draft`` (an optional target size) lets a JPEG much larger than it be decoded at 1/2, 1/4 or 1/8 scale by libjpeg's
DCT scaling (``PIL.Image.draft``): cheaper, but not the same pixels as full decoding plus resizing; the training loader
asks for it only when configured (``captiondata.loader.draft_size``), evaluation never.

Every failure raises ``BadSample(reason)`` with a reason from ``counters.SKIP_REASONS`` so the
reader can skip and count it; every conversion of a decodable image is reported through ``count`` with a name
from ``counters.DECODE_EVENTS``.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import warnings
import zlib
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
from PIL import ExifTags, Image, ImageOps

from captiondata.config import DEFAULT_MAX_PIXELS

DECODER_VERSION = (
    "rgb8/2"  # bump when decode_image maps some bytes to different pixels (it enters evaluation identities)
)
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


_JPEG_SOF_FAST = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman frames
_JPEG_SOF_OTHER = frozenset(range(0xC3, 0xD0)) - {0xC4, 0xC8, 0xCC}  # lossless, hierarchical, arithmetic coding
_FAST_JPEG: Dict[str, Any] = {"ok": None}


def jpeg_fast_size(data: bytes, exif_transpose: bool = True) -> Optional[Tuple[int, int, int]]:
    """(width, height, components) of a JPEG that torchvision's decoder maps to Pillow's pixels, else None.

    Walks the marker segments up to the first scan (about 5 us): the image must start with SOI and end with EOI
    (a cut file goes to Pillow, which refuses it), have one 8-bit baseline/extended/progressive Huffman frame with 1
    or 3 components, no Adobe APP14 (colour transform, CMYK), no MPF APP2, and no EXIF APP1 when ``exif_transpose``.
    """
    n = len(data)
    if n < 8 or data[0] != 0xFF or data[1] != 0xD8 or data[-2] != 0xFF or data[-1] != 0xD9:
        return None
    pos, size = 2, None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2 or pos + 2 + length > n:
            return None
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xDA:  # start of scan: every header segment has been seen
            return size
        if marker in _JPEG_SOF_FAST:
            if size is not None or len(body) < 6 or body[0] != 8 or body[5] not in (1, 3):
                return None
            height, width = (body[1] << 8) | body[2], (body[3] << 8) | body[4]
            if not width or not height:
                return None
            size = (width, height, body[5])
        elif marker in _JPEG_SOF_OTHER:
            return None
        elif (marker == 0xEE and body.startswith(b"Adobe")) or (marker == 0xE2 and body.startswith(b"MPF")):
            return None
        elif marker == 0xE1 and exif_transpose and body.startswith(b"Exif"):
            return None
        pos += 2 + length
    return None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def png_fast_size(data: bytes) -> Optional[Tuple[int, int, int]]:
    """(width, height, channels) of a PNG that torchvision's libpng decodes to Pillow's pixels, else None.

    PNG is lossless, so any two correct decoders agree; the path is kept to what Pillow maps to ``L`` or ``RGB``
    without conversion choices: 8-bit greyscale (colour type 0) or truecolour (2), no ``tRNS`` (transparency) chunk,
    every chunk before the first ``IDAT`` with a valid CRC (Pillow refuses a bad one), ending in ``IEND``.
    """
    if len(data) < 45 or not data.startswith(_PNG_SIGNATURE) or not data.endswith(_PNG_IEND):
        return None
    pos, size = 8, None
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return None
        if kind == b"IDAT":
            return size
        if zlib.crc32(data[pos + 4 : pos + 8 + length]) != int.from_bytes(data[pos + 8 + length : end], "big"):
            return None
        if kind == b"IHDR":
            if length != 13 or size is not None:
                return None
            width, height = (
                int.from_bytes(data[pos + 8 : pos + 12], "big"),
                int.from_bytes(data[pos + 12 : pos + 16], "big"),
            )
            depth, colour = data[pos + 16], data[pos + 17]
            if depth != 8 or colour not in (0, 2) or not width or not height:
                return None
            size = (width, height, 1 if colour == 0 else 3)
        elif kind == b"tRNS" or size is None:
            return None
        pos = end
    return None


def _tv_decode(data: bytes, png: bool = False) -> Optional[np.ndarray]:
    """torchvision's libjpeg-turbo (libpng with ``png``) decode as a uint8 HxWxC array (C = the file's components), or None when torchvision
    is missing, raises, or libjpeg warns (corrupt data: Pillow decides). Calls the registered op directly
    (``torchvision.io.decode_jpeg`` adds a deprecation warning and usage logging per call)."""
    op = _FAST_JPEG.get("op")
    if op is None:
        try:
            import torch
            import torchvision.io  # noqa: F401  (registers torch.ops.image)

            op = _FAST_JPEG["op"] = (
                torch,
                torch.ops.image.decode_jpeg,
                torch.ops.image.decode_png,
                torchvision.io.ImageReadMode.UNCHANGED.value,
            )
        except (ImportError, AttributeError, RuntimeError):  # pragma: no cover - torchvision is a dependency
            return None
    torch, decode_jpeg, decode_png, unchanged = op
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            out = decode_png(encoded, unchanged, False) if png else decode_jpeg(encoded, unchanged, False)
        except (RuntimeError, ValueError):
            return None
    if caught:
        return None
    return out.permute(1, 2, 0).numpy()


_CHECK_JPEG = None  # a 4:2:0, odd-sized test image, built on first use


def _fast_jpeg_agrees() -> bool:
    """True when torchvision's decoder gives Pillow's pixels on a 4:2:0, 4:4:4, progressive and grayscale test image of
    odd size (run once per process; a disagreeing pair of libjpeg builds switches the fast path off)."""
    if _FAST_JPEG["ok"] is None:
        rng = np.random.default_rng(0)
        base = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).resize((75, 53))
        ok = True
        for image, options in (
            (base, dict(subsampling=2)),
            (base, dict(subsampling=0, quality=95)),
            (base, dict(progressive=True)),
            (base.convert("L"), {}),
        ):
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", **options)
            data = buffer.getvalue()
            fast = _tv_decode(data) if jpeg_fast_size(data) else None
            slow = np.asarray(Image.open(io.BytesIO(data)))
            ok = ok and fast is not None and np.array_equal(fast.reshape(slow.shape), slow)
        _FAST_JPEG["ok"] = ok
    return bool(_FAST_JPEG["ok"])


def _decode_fast_jpeg(data: bytes, max_pixels: int, exif_transpose: bool, count: Count) -> Optional[np.ndarray]:
    """``decode_image``'s pixels (uint8 HxWx3) for a JPEG that ``jpeg_fast_size`` accepts or a PNG that
    ``png_fast_size`` accepts, decoded by torchvision; None otherwise."""
    png = data[:1] == b"\x89"
    size = png_fast_size(data) if png else jpeg_fast_size(data, exif_transpose)
    if size is None or not _fast_jpeg_agrees():
        return None
    width, height, components = size
    if width * height > max_pixels:
        raise BadSample("image_too_large", f"{width}x{height} > {max_pixels} pixels")
    array = _tv_decode(data, png)
    if array is None or array.shape != (height, width, components):
        return None
    if components == 1:
        if count:
            count("converted_mode")  # as Pillow's L -> RGB conversion in _to_rgb
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


DraftRule = Callable[[int, int], int]  # (stored width, height) -> the largest allowed reduction: 1, 2, 4 or 8


def _draft_request(size: Tuple[int, int], factor: int) -> Optional[Tuple[int, int]]:
    """The size to ask ``Image.draft`` for so that libjpeg scales by exactly ``factor`` (Pillow picks the largest
    power of two <= min(W // w, H // h)); None when ``factor`` is 1 or not a power of two in 2..8."""
    width, height = size
    if factor not in (2, 4, 8) or width < factor or height < factor:
        return None
    return width // factor, height // factor


def _draft_is_identity(data: bytes, draft: DraftRule, exif_transpose: bool) -> bool:
    """True when ``draft`` would not reduce this image (not a JPEG, or a JPEG whose rule gives factor 1), so the
    full-size fast path may decode it."""
    if data[:2] != b"\xff\xd8":
        return True
    size = jpeg_fast_size(data, exif_transpose)
    return size is not None and draft(size[0], size[1]) == 1


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_transpose: bool = True,
    count: Count = None,
    draft: Optional[DraftRule] = None,
    as_array: bool = False,
) -> Any:
    """Decode image bytes to 8-bit RGB; refuse empty, undecodable, truncated or over-``max_pixels`` images.

    data: the encoded file. max_pixels: width x height above which the image is refused (``image_too_large``); it is
    the only limit (Pillow's own 89.5 Mpx guard is raised to it, see ``allow_pixels``). exif_transpose: apply the EXIF
    orientation tag (``PIL.ImageOps.exif_transpose``; counted as ``exif_rotated``). count: called with the name of
    each conversion (``counters.DECODE_EVENTS``), e.g. ``SampleCounters.add``. High bit depth is scaled to 8 bits and
    transparency composited over white (``_to_rgb``). Raises BadSample(``empty_image`` | ``corrupt_image`` |
    ``image_too_large``).

    draft: a rule (``captiondata.loader.draft_rule``) giving, for a JPEG's stored (width, height), the reduction factor
    (1, 2, 4 or 8) its consumer can take; the JPEG is then decoded at that scale by libjpeg (``Image.draft``; changes
    pixels, see the module docstring). None: full-size decoding, through the torchvision fast path where it applies
    (the same pixels as Pillow's). as_array: return the pixels as a uint8 HxWx3 numpy array instead of a PIL RGB
    image (the fast path then skips building an image: 10 us of 45 us per 32 px JPEG).
    """
    if not data:
        raise BadSample("empty_image")
    allow_pixels(max_pixels)
    if draft is None or _draft_is_identity(data, draft, exif_transpose):
        fast = _decode_fast_jpeg(data, max_pixels, exif_transpose, count)
        if fast is not None:
            return fast if as_array else Image.fromarray(fast, "RGB")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise BadSample("image_too_large", f"{width}x{height} > {max_pixels} pixels")
        if draft is not None and image.format == "JPEG":
            request = _draft_request((width, height), draft(width, height))
            if request is not None:
                image.draft(image.mode, request)
        image.load()
        if exif_transpose and _orientation(image) != 1:
            image = ImageOps.exif_transpose(image)
            if count:
                count("exif_rotated")
        rgb = _to_rgb(image, count)
        return np.asarray(rgb) if as_array else rgb
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
    """Strict UTF-8 JSON decode. Raises BadSample("non_utf8_text" | "bad_json"): "bad_json" also for JSON that
    ``json.loads`` parses but refuses to build, nesting deeper than Python's recursion limit (RecursionError) and an
    integer of more digits than ``sys.get_int_max_str_digits()`` (ValueError, 4300 by default since CPython 3.11)."""
    try:
        return json.loads(decode_text(data))
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        raise BadSample("bad_json", f"{type(exc).__name__}: {str(exc)[:200]}") from None
