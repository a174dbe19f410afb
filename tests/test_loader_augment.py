"""captiondata.loader: augmentation is a function of (seed, shard, key, epoch), and iterating leaves the caller's
global torch and python RNG where it was (num_workers=0 runs the transform in the caller's process)."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import noise_jpeg
from torchvision import transforms

from captiondata.config import DataConfig, MixConfig
from captiondata.loader import CaptionLoader
from captiondata.records import Record
from captiondata.writer import ShardWriter


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> str:
    """24 samples in 4 shards; keys restart in every shard."""
    out = tmp_path_factory.mktemp("augment")
    writer = ShardWriter(str(out), "train", max_count=6)
    writer.write_all(
        [
            Record(key=f"k{i % 6}", image=noise_jpeg(i), original=f"alt {i}", recaptions=[f"recap {i}"])
            for i in range(24)
        ]
    )
    writer.close()
    return str(out / "train-*.tar")


def augmenting() -> transforms.Compose:
    """A random crop (torch RNG) in a random order with a random flip (python ``random``: RandomOrder)."""
    return transforms.Compose(
        [
            transforms.RandomOrder(
                [transforms.RandomResizedCrop(16, scale=(0.3, 1.0)), transforms.RandomHorizontalFlip()]
            ),
            transforms.ToTensor(),
        ]
    )


def images(spec: str, workers: int, epoch: int, batch_size: int = 4, skip: int = 0) -> dict:
    """(shard file, key) -> augmented image of one epoch."""
    loader = CaptionLoader(
        DataConfig(builder="none", train_shards=spec, num_workers=workers, shuffle_buffer=5),
        MixConfig(p=0.5),
        image_transform=augmenting(),
        batch_size=batch_size,
        seed=3,
        num_workers=workers,
    )
    loader.set_epoch(epoch)
    return {
        (shard.rsplit("/", 1)[-1], key): image
        for batch in loader.iterate(skip_batches=skip)
        for shard, key, image in zip(batch["shard"], batch["key"], batch["image"])
    }


def test_a_samples_augmentation_depends_on_the_sample_and_epoch_not_on_order_workers_or_skipping(spec):
    one = images(spec, workers=0, epoch=0)
    assert len(one) == 24
    other = images(spec, workers=2, epoch=0, batch_size=3)  # another batch size and worker split: another order
    assert other.keys() == one.keys() and all(torch.equal(one[k], other[k]) for k in one)
    tail = images(spec, workers=0, epoch=0, skip=2)  # a resume at batch 2 re-reads and drops batches 0 and 1
    assert len(tail) == 16 and all(torch.equal(one[k], tail[k]) for k in tail)
    later = images(spec, workers=0, epoch=1)
    assert sum(not torch.equal(one[k], later[k]) for k in one) >= 20  # the augmentation is active and new each epoch
    first_shard = [one[k] for k in sorted(one) if k[0] == "train-000000.tar"]
    second_shard = [one[k] for k in sorted(one) if k[0] == "train-000001.tar"]
    assert len(first_shard) == len(second_shard) == 6
    assert not any(torch.equal(a, b) for a, b in zip(first_shard, second_shard))  # same key, other shard: other crop


@pytest.mark.parametrize("workers", [0, 1])
def test_iterating_leaves_the_callers_torch_and_python_rng_unchanged(spec, workers):
    torch.manual_seed(11)
    random.seed(12)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(11)
    random.seed(12)
    images(spec, workers=workers, epoch=0)
    got = (torch.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]
