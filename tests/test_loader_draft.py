"""JPEG draft decoding in the training loader: the rule never lets a crop fall below the target, and the loader's
batches with draft differ from full decoding only by a small, bounded pixel difference."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from captiondata.config import DataConfig, MixConfig
from captiondata.loader import CaptionLoader, draft_rule
from captiondata.records import Record


@pytest.mark.parametrize(
    "target,scale,ratio",
    [(112, (0.9, 1.0), (3 / 4, 4 / 3)), (64, (0.5, 1.0), (3 / 4, 4 / 3)), (100, (0.08, 1.0), (0.5, 2.0))],
)
def test_random_resized_crop_rule_keeps_every_crop_at_least_the_target(target, scale, ratio):
    crop = transforms.RandomResizedCrop(target, scale=scale, ratio=ratio)
    rule = draft_rule(transforms.Compose([crop]))
    torch.manual_seed(0)
    for width, height in [(512, 512), (640, 427), (300, 1000), (2000, 1500), (113, 113)]:
        factor = rule(width, height)
        if factor == 1:  # no draft: crops are what they are without it
            assert (
                width < 2 * target
                or height < 2 * target
                or (width * height * scale[0] * min(ratio[0], 1 / ratio[1])) / 4 < (target + 1) ** 2
            )
            continue
        drafted = Image.new("RGB", (-(-width // factor), -(-height // factor)))
        smallest = min(min(crop.get_params(drafted, crop.scale, crop.ratio)[2:]) for _ in range(400))
        assert smallest >= target, (width, height, factor)
        if factor < 8:  # the next factor would allow a box below the target (the rule is as large as it may be)
            twice = Image.new("RGB", (-(-width // (2 * factor)), -(-height // (2 * factor))))
            area = twice.size[0] * twice.size[1] * scale[0] * min(ratio[0], 1 / ratio[1])
            assert min(twice.size) < target or area < (target + 1) ** 2


def test_resize_rule_and_unknown_transforms():
    rule = draft_rule(transforms.Compose([transforms.Resize(112), transforms.CenterCrop(112)]))
    assert [rule(w, w) for w in (111, 224, 450, 900, 5000)] == [1, 2, 4, 8, 8]
    assert rule(1000, 200) == 1  # the shorter side decides
    assert draft_rule(transforms.Compose([transforms.Resize(112, max_size=200)])) is None
    assert draft_rule(transforms.Compose([transforms.CenterCrop(112)])) is None


def photo_jpeg(seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_loader_with_draft_yields_the_same_samples_close_pixels(shard_factory):
    records = [
        Record(key=f"k{i:03d}", image=photo_jpeg(i, 512), original=f"alt {i}", recaptions=[f"recap {i}"], references=[])
        for i in range(12)
    ]
    spec = shard_factory(records, per_shard=6)
    cfg = DataConfig(builder="none", train_shards=spec, num_workers=0, shuffle_buffer=0)
    transform = transforms.Compose(
        [
            transforms.Resize(112, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(112),
            transforms.ToTensor(),
        ]
    )
    full = list(CaptionLoader(cfg, MixConfig(p=1.0), image_transform=transform, batch_size=4, jpeg_draft=False))
    draft = list(CaptionLoader(cfg, MixConfig(p=1.0), image_transform=transform, batch_size=4, jpeg_draft=True))
    assert [b["key"] for b in full] == [b["key"] for b in draft] and len(full) == 3
    diff = torch.cat([(a["image"] - b["image"]).abs().flatten() for a, b in zip(full, draft)])
    assert 0 < float(diff.mean()) < 0.02  # drafted (1/4 scale) then resized: close, not equal (measured ~0.005)
