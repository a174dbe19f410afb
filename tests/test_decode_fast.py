"""captiondata.decode's torchvision JPEG path gives Pillow's pixels; JPEG draft decoding's size rule."""

from __future__ import annotations

import glob
import io
import os

import numpy as np
import pytest
from conftest import require_real
from PIL import Image

from captiondata.config import default_data_root
from captiondata.decode import BadSample, _draft_request, decode_image, jpeg_fast_size


def pillow_rgb(data: bytes) -> np.ndarray:
    """The independent value: Pillow's decode converted to RGB."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def encoded(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients plus noise (chroma detail, so subsampling and upsampling matter)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=2)
    return Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize(
    "options",
    [
        dict(subsampling=2),
        dict(subsampling=1),
        dict(subsampling=0, quality=97),
        dict(progressive=True),
        dict(optimize=True, quality=40),
        dict(restart_marker_blocks=1),
        dict(gray=True),
    ],
)
@pytest.mark.parametrize("size", [(1, 1), (17, 9), (75, 53), (128, 96)])
def test_fast_path_equals_pillow(options, size):
    options = dict(options)
    image = photo_like(*size, seed=size[0])
    if options.pop("gray", False):
        image = image.convert("L")
    data = encoded(image, **options)
    assert jpeg_fast_size(data) == (size[0], size[1], 1 if image.mode == "L" else 3)
    events = []
    out = decode_image(data, count=events.append)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), pillow_rgb(data))
    assert events == (["converted_mode"] if image.mode == "L" else [])


def test_fast_path_refusals_go_through_pillow():
    image = photo_like(40, 30, 0)
    data = encoded(image)
    assert jpeg_fast_size(data[:-10]) is None  # no EOI
    with pytest.raises(BadSample) as bad:
        decode_image(data[: len(data) // 2])
    assert bad.value.reason == "corrupt_image"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: Pillow's path applies it
    rotated = encoded(image, exif=exif.tobytes())
    assert jpeg_fast_size(rotated) is None and jpeg_fast_size(rotated, exif_transpose=False) == (40, 30, 3)
    assert decode_image(rotated).size == (30, 40)
    assert np.array_equal(np.asarray(decode_image(rotated, exif_transpose=False)), pillow_rgb(rotated))
    cmyk = encoded(image.convert("CMYK"))
    assert jpeg_fast_size(cmyk) is None
    assert np.array_equal(np.asarray(decode_image(cmyk)), pillow_rgb(cmyk))
    with pytest.raises(BadSample) as bad:
        decode_image(data, max_pixels=40 * 30 - 1)
    assert bad.value.reason == "image_too_large"
    scan = data.index(b"\xff\xda")
    broken = bytearray(data)
    broken[scan + 40 : scan + 60] = b"\x00" * 20  # corrupt entropy data, EOI kept
    out = decode_image(bytes(broken))  # whatever libjpeg makes of it, the same as Pillow's (fallback on its warning)
    assert np.array_equal(np.asarray(out), pillow_rgb(bytes(broken)))


@pytest.mark.parametrize("folder,pattern", [("cifar10", "test/*/*.jpg"), ("flickr8k", "images/*.jpg")])
def test_fast_path_equals_pillow_on_real_images(folder, pattern):
    root = os.path.join(default_data_root(), folder)
    files = sorted(glob.glob(os.path.join(root, pattern)))
    require_real(root)
    assert files, f"{root} holds no {pattern}"
    for path in files[:: max(1, len(files) // 300)]:
        with open(path, "rb") as handle:
            data = handle.read()
        assert np.array_equal(np.asarray(decode_image(data)), pillow_rgb(data)), path


def test_draft_request_scales_by_exactly_the_factor():
    for size in [(513, 257), (640, 479), (17, 9)]:
        data = encoded(photo_like(*size, 1))
        for factor in (1, 2, 4, 8):
            out = decode_image(data, draft=lambda w, h, f=factor: f)
            expected = (-(-size[0] // factor), -(-size[1] // factor)) if min(size) >= factor else size
            assert out.size == expected, (size, factor)
    assert _draft_request((512, 512), 3) is None and _draft_request((4, 4), 8) is None


@pytest.mark.parametrize("mode,size", [("L", (8, 8)), ("RGB", (33, 17)), ("L", (1, 1))])
@pytest.mark.parametrize("interlace", [False, True])
def test_png_fast_path_equals_pillow(mode, size, interlace):
    from captiondata.decode import png_fast_size

    image = photo_like(*size, seed=3).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", interlace=interlace) if interlace else image.save(buffer, "PNG")
    data = buffer.getvalue()
    assert png_fast_size(data) == (size[0], size[1], 1 if mode == "L" else 3)
    events = []
    assert np.array_equal(np.asarray(decode_image(data, count=events.append)), pillow_rgb(data))
    assert events == (["converted_mode"] if mode == "L" else [])


def test_png_refusals_go_through_pillow():
    from captiondata.decode import png_fast_size

    for image in (
        photo_like(9, 9, 0).convert("RGBA"),
        photo_like(9, 9, 0).convert("P"),
        Image.new("I;16", (9, 9), 300),
    ):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        assert png_fast_size(buffer.getvalue()) is None
    transparent = photo_like(9, 9, 0)
    buffer = io.BytesIO()
    transparent.save(buffer, "PNG", transparency=(0, 0, 0))
    data = buffer.getvalue()
    assert png_fast_size(data) is None
    buffer = io.BytesIO()
    photo_like(9, 9, 0).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[20] ^= 1  # IHDR width byte: its CRC no longer matches, which Pillow refuses
    assert png_fast_size(bytes(data)) is None
    with pytest.raises(BadSample):
        decode_image(bytes(data))
    with pytest.raises(BadSample):
        decode_image(bytes(buffer.getvalue()[:-30]))


def test_draft_factor_one_takes_the_exact_path():
    data = encoded(photo_like(64, 48, 2))
    assert np.array_equal(np.asarray(decode_image(data, draft=lambda w, h: 1)), pillow_rgb(data))
    assert decode_image(data, draft=lambda w, h: 2).size == (32, 24)
