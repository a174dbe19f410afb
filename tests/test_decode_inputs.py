"""One image decoder and one caption normalisation for training and evaluation (issue 14, items 4 and 5)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from captiondata.captions import normalize_caption
from captiondata.config import DataConfig, MixConfig, project_layout
from captiondata.counters import COUNTER_NAMES, DECODE_EVENTS, SampleCounters, summarize
from captiondata.decode import BadSample, decode_image
from captiondata.reader import iter_samples


def encoded(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    """``image`` saved to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def pixels(image: Image.Image) -> list:
    """An RGB image's pixels in raster order, as (r, g, b) tuples."""
    return [tuple(int(v) for v in p) for p in np.asarray(image).reshape(-1, 3)]


class Tally:
    """A ``count`` callback that remembers every event."""

    def __init__(self) -> None:
        self.events: dict = {}

    def __call__(self, name: str, n: int = 1) -> None:
        self.events[name] = self.events.get(name, 0) + n


def sixteen_bit_png(values) -> bytes:
    """A 1-row 16-bit grayscale PNG (Pillow opens it as mode I;16)."""
    return encoded(Image.fromarray(np.asarray([values], dtype=np.uint16)))


def sideways_jpeg() -> bytes:
    """A 40x20 JPEG, left half red and right half blue, tagged EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(image, "JPEG", quality=95, exif=exif.tobytes())


def rgba_png() -> bytes:
    """A 3x1 RGBA PNG: opaque red, fully transparent black, half-transparent red (alpha 128)."""
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 255), (0, 0, 0, 0), (255, 0, 0, 128)])
    return encoded(image)


def test_16bit_grayscale_png_is_scaled_not_clipped_white():
    values = [0, 1000, 25700, 32768, 65535]
    data = sixteen_bit_png(values)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert pixels(Image.open(io.BytesIO(data)).convert("RGB"))[1] == (255, 255, 255)  # the bug: Pillow clips
    tally = Tally()
    image = decode_image(data, count=tally)
    expected = [round(v * 255 / 65535) for v in values]  # [0, 4, 100, 128, 255]
    assert image.mode == "RGB" and [p[0] for p in pixels(image)] == expected
    assert all(p[0] == p[1] == p[2] for p in pixels(image))
    assert tally.events == {"converted_high_bit_depth": 1}


def test_big_endian_16bit_32bit_integer_and_float_images_are_scaled():
    big = Image.frombytes("I;16B", (3, 1), np.asarray([0, 257 * 64, 65535], dtype=">u2").tobytes())
    assert [p[0] for p in pixels(decode_image(encoded(big, "TIFF")))] == [0, 64, 255]
    wide = Image.fromarray(np.asarray([[-5, 32768, 70000]], dtype=np.int32), "I")  # clipped to [0, 65535] first
    assert [p[0] for p in pixels(decode_image(encoded(wide, "TIFF")))] == [0, 128, 255]
    unit = Image.fromarray(np.asarray([[0.0, 0.5, 1.0]], dtype=np.float32), "F")  # [0, 1] floats
    assert [p[0] for p in pixels(decode_image(encoded(unit, "TIFF")))] == [0, 128, 255]


def test_transparency_is_composited_over_white_and_counted():
    tally = Tally()
    rgb = pixels(decode_image(rgba_png(), count=tally))
    assert rgb[0] == (255, 0, 0) and rgb[1] == (255, 255, 255)  # transparent black shows the white page
    half = 255 * 128 / 255 + 255 * (1 - 128 / 255)  # red channel; green/blue: 0 * a + 255 * (1 - a)
    assert rgb[2][0] == round(half) and abs(rgb[2][1] - 255 * (1 - 128 / 255)) <= 1
    assert tally.events == {"converted_alpha": 1}
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putdata([0, 1])
    tally = Tally()
    assert pixels(decode_image(encoded(palette, transparency=0), count=tally)) == [(255, 255, 255), (10, 200, 30)]
    assert tally.events == {"converted_alpha": 1}
    tally = Tally()
    opaque = Image.new("LA", (1, 1), (77, 255))
    assert pixels(decode_image(encoded(opaque), count=tally)) == [(77, 77, 77)] and tally.events == {
        "converted_mode": 1
    }


def test_exif_orientation_is_applied_and_counted_unless_switched_off():
    tally = Tally()
    upright = decode_image(sideways_jpeg(), count=tally)
    assert upright.size == (20, 40) and tally.events == {"exif_rotated": 1}
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # left (red) half is now on top
    tally = Tally()
    assert decode_image(sideways_jpeg(), exif_transpose=False, count=tally).size == (40, 20) and tally.events == {}
    assert DataConfig().exif_transpose is True


def test_configured_pixel_limit_is_the_only_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses > 2000 pixels in Image.open itself
    data = encoded(Image.new("RGB", (64, 64), (1, 2, 3)))  # 4,096 pixels
    assert decode_image(data, max_pixels=10_000).size == (64, 64)
    assert Image.MAX_IMAGE_PIXELS == 10_000  # raised to the configured limit, never lowered
    decode_image(data, max_pixels=5_000)
    assert Image.MAX_IMAGE_PIXELS == 10_000
    with pytest.raises(BadSample, match="image_too_large"):
        decode_image(data, max_pixels=4_000)


def test_image_above_pillows_89_megapixels_decodes_when_configured():
    data = encoded(Image.new("L", (9500, 9500), 7), compress_level=1)  # 90.25 Mpx > Pillow's 89.48 Mpx
    assert decode_image(data, max_pixels=100_000_000).size == (9500, 9500)
    with pytest.raises(BadSample, match="image_too_large"):
        decode_image(data, max_pixels=64_000_000)


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append one member."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def conversion_shard(path) -> dict:
    """A project-layout shard with a 16-bit PNG, an EXIF-rotated JPEG and a transparent PNG; returns key -> image bytes."""
    images = {
        "deep": ("png", sixteen_bit_png([0, 30000, 65535])),
        "rotated": ("jpg", sideways_jpeg()),
        "clear": ("png", rgba_png()),
    }
    with tarfile.open(path, "w") as tar:
        for key, (ext, data) in images.items():
            add(tar, f"{key}.{ext}", data)
            add(tar, f"{key}.txt", f"alt {key}".encode())
            add(tar, f"{key}.json", json.dumps({"recaptions": [f"recap {key}"]}).encode())
    return {key: data for key, (_, data) in images.items()}


def test_reader_counts_conversions_and_decodes_like_the_evaluation_sets(tmp_path):
    from captiondata.loader import CaptionLoader
    from evals.tasks.datasets import load_rgb

    images = conversion_shard(tmp_path / "conv-000000.tar")
    counters = SampleCounters(max_workers=0)
    records = {r.key: r for r in iter_samples(str(tmp_path / "conv-000000.tar"), project_layout(), counters)}
    totals = counters.totals()
    assert {e: totals[e] for e in DECODE_EVENTS} == {
        "exif_rotated": 1,
        "converted_high_bit_depth": 1,
        "converted_alpha": 1,
        "converted_mode": 0,
    }
    for key, data in images.items():  # the same bytes as an evaluation file: the same pixels
        (tmp_path / key).write_bytes(data)
        assert np.array_equal(np.asarray(load_rgb(str(tmp_path / key))), np.asarray(records[key].image))
    loader = CaptionLoader(
        DataConfig(builder="none", train_shards=str(tmp_path / "conv-000000.tar"), num_workers=0, shuffle_buffer=0),
        MixConfig(p=1.0),
        batch_size=1,
        drop_last=False,
    )
    list(loader)
    assert loader.epoch_stats()["converted"] == {"exif_rotated": 1, "converted_high_bit_depth": 1, "converted_alpha": 1}
    unrotated = CaptionLoader(
        DataConfig(
            builder="none",
            train_shards=str(tmp_path / "conv-000000.tar"),
            num_workers=0,
            shuffle_buffer=0,
            exif_transpose=False,
        ),
        MixConfig(p=1.0),
        batch_size=1,
        drop_last=False,
    )
    shapes = {key: tuple(image.shape) for batch in unrotated for key, image in zip(batch["key"], batch["image"])}
    assert shapes["rotated"][-2:] == (20, 40) and "exif_rotated" not in unrotated.epoch_stats()["converted"]
    assert set(DECODE_EVENTS) <= set(COUNTER_NAMES) and summarize({"converted_alpha": 2})["converted"] == {
        "converted_alpha": 2
    }


def test_caption_normalisation():
    assert normalize_caption("caf&eacute;&nbsp;&amp;  bar") == "café & bar"
    assert (
        normalize_caption("\x00\x00") == ""
        and normalize_caption("&nbsp;") == ""
        and normalize_caption("&amp;nbsp;") == ""
    )
    assert normalize_caption("\ufeffa\u200bb\x7f c\td\ne ") == "ab c d e"
    assert normalize_caption("a&lt;b") == "a<b" and normalize_caption("naïve café") == "naïve café"


def test_reader_skips_and_counts_captions_empty_after_normalising(tmp_path):
    path = tmp_path / "text-000000.tar"
    jpeg = encoded(Image.new("RGB", (8, 8), (9, 9, 9)), "JPEG")
    with tarfile.open(path, "w") as tar:
        for key, caption in (
            ("nul", b"\x00\x00"),
            ("nbsp", b"&nbsp;"),
            ("entity", b"caf&eacute;&amp;co\x00"),
            ("bom", "\ufeffplain".encode()),
        ):
            add(tar, f"{key}.jpg", jpeg)
            add(tar, f"{key}.txt", caption)
    counters = SampleCounters(max_workers=0)
    layout = project_layout()
    records = {r.key: r for r in iter_samples(str(path), layout, counters)}
    assert sorted(records) == ["bom", "entity"] and counters.totals()["empty_caption"] == 2
    assert records["entity"].original == "café&co" and records["bom"].original == "plain"
    assert records["entity"].references == ["café&co"]
