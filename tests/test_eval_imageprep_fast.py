"""evals.tasks.imageprep's resize + crop path gives open_clip's evaluation transform's tensors exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from evals.tasks.imageprep import SplitPreprocess, image_loader


def open_clip_eval(size: int, crop: int, interpolation=T.InterpolationMode.BICUBIC) -> T.Compose:
    from open_clip.transform import MaybeConvertMode, MaybeToTensor

    return T.Compose(
        [
            T.Resize(size, interpolation=interpolation),
            T.CenterCrop(crop),
            MaybeConvertMode(),
            MaybeToTensor(),
            T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ]
    )


@pytest.mark.parametrize(
    "size,crop,interpolation",
    [
        (32, 32, T.InterpolationMode.BICUBIC),
        (64, 56, T.InterpolationMode.BILINEAR),
        (37, 37, T.InterpolationMode.NEAREST),
    ],
)
def test_resize_crop_equals_the_transform(size, crop, interpolation):
    transform = open_clip_eval(size, crop, interpolation)
    split = SplitPreprocess(transform)
    assert split.plan is not None
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(size, size), (8, 8), (size, 3 * size), (129, 77), (size + 1, size), (1000, 33)]
    ]
    for as_array in (False, True):
        items = [split.pil_stage(np.asarray(i) if as_array else i) for i in images]
        for item, image in zip(items, images):
            assert torch.equal(split.tensor_stage([item]), transform(image).unsqueeze(0))


def test_other_transforms_keep_the_generic_path():
    assert (
        SplitPreprocess(
            T.Compose([T.Resize(32, max_size=40), T.CenterCrop(32), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
        ).plan
        is None
    )
    assert (
        SplitPreprocess(
            T.Compose([T.CenterCrop(32), T.Resize(32), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
        ).plan
        is None
    )
    assert (
        SplitPreprocess(
            T.Compose([T.Resize(32), T.CenterCrop(40), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
        ).plan
        is None
    )


def test_background_loader_keeps_order_and_raises(tmp_path):
    class Numbers(torch.utils.data.Dataset):
        def __len__(self):
            return 50

        def __getitem__(self, index):
            if index == 47 and self.fail:
                raise RuntimeError("boom")
            return Image.new("RGB", (4, 4), (index, 0, 0)), index

    split = SplitPreprocess(open_clip_eval(4, 4))
    data = Numbers()
    data.fail = False
    targets = [t for _, batch in image_loader(data, split, 8, 0) for t in batch]
    assert targets == list(range(50))
    data.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        list(image_loader(data, split, 8, 0))
