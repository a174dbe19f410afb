"""DDP data messages say what is wrong, and epoch reports count what was trained (issue 14, item 7)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_records

from captiondata.config import DataConfig, MixConfig
from captiondata.loader import CaptionLoader
from harness_infra.errors import ConfigError
from training.distributed import DistEnv
from training.stream import DataStream


def test_two_ranks_over_one_shard_say_the_shard_cannot_be_split(shard_factory):
    spec = shard_factory(make_records(64), per_shard=64)
    data_cfg = DataConfig(builder="none", train_shards=spec, num_workers=0)
    with pytest.raises(
        ConfigError,
        match=r"1 train shard\(s\) for 2 ranks: .*a shard is never split.*1 rank\(s\) would get no data.*"
        r"at least 2 shards.*data.resampled=true",
    ):
        CaptionLoader(data_cfg, MixConfig(p=0.5), batch_size=8, rank=1, world_size=2)
    resampled = DataConfig(builder="none", train_shards=spec, num_workers=0, resampled=True, epoch_samples=64)
    assert (
        len(CaptionLoader(resampled, MixConfig(p=0.5), batch_size=8, rank=1, world_size=2)) == 4
    )  # resampling can split it


def test_epoch_reports_count_trained_samples_not_read_ones(shard_factory):
    # 20 samples, batches of 8, drop_last: the loader mixes (and counts) all 20, the trainer trains 16
    spec = shard_factory(make_records(20), per_shard=10)
    data_cfg = DataConfig(builder="none", train_shards=spec, num_workers=0, shuffle_buffer=100)
    loader = CaptionLoader(data_cfg, MixConfig(p=0.5, seed=3), tokenize=lambda texts: texts, batch_size=8)
    reports = []
    stream = DataStream(loader, DistEnv(), 0, 0, lambda epoch, stats: reports.append(stats))
    batches = stream.take(2)
    stream.take(1)  # rolls over: epoch 0 is reported
    stats = reports[0]
    originals = sum(source == "original" for b in batches for source in b["source"])
    assert stats["samples"] == 16 and stats["samples_read"] == 20
    assert stats["original_fraction"] == pytest.approx(originals / 16)
    assert stats["read_original_fraction"] == pytest.approx(loader_fraction(data_cfg))


def loader_fraction(data_cfg):
    """The loader's own realised fraction over every sample it read (an independent second pass)."""
    again = CaptionLoader(
        data_cfg, MixConfig(p=0.5, seed=3), tokenize=lambda texts: texts, batch_size=8, drop_last=False
    )
    sources = [s for b in again.iterate() for s in b["source"]]
    return sources.count("original") / len(sources)


def test_a_data_set_smaller_than_one_batch_says_so_in_one_line(shard_factory):
    spec = shard_factory(make_records(5), per_shard=5)
    loader = CaptionLoader(
        DataConfig(builder="none", train_shards=spec, num_workers=0),
        MixConfig(p=1.0),
        tokenize=lambda t: t,
        batch_size=8,
    )
    stream = DataStream(loader, DistEnv(), 0, 0, lambda epoch, stats: None)
    with pytest.raises(
        ConfigError, match=r"epoch 0 gave no full batch: the loader read 5 valid samples .*lower the batch size"
    ):
        stream.take(1)


def test_a_resume_at_the_end_of_an_epoch_goes_on_with_the_next_and_reports_nothing_trained(shard_factory):
    # 20 samples, batches of 8: two batches per epoch, finite mode (the length is unknown to the stream)
    spec = shard_factory(make_records(20), per_shard=10)
    data_cfg = DataConfig(builder="none", train_shards=spec, num_workers=0, shuffle_buffer=100)

    def loader():
        return CaptionLoader(data_cfg, MixConfig(p=0.5, seed=3), tokenize=lambda texts: texts, batch_size=8)

    straight = []
    through = DataStream(loader(), DistEnv(), 0, 0, lambda epoch, stats: straight.append(epoch))
    expected = [b["key"] for b in through.take(3)]  # epoch 0's two batches, then epoch 1's first
    assert straight == [0]
    reports = []
    resumed = DataStream(
        loader(),
        DistEnv(),
        0,
        2,
        lambda epoch, stats: reports.append((epoch, stats["samples"], stats.get("resumed_at_batch"))),
    )
    assert resumed.take(1)[0]["key"] == expected[2]  # the checkpoint after epoch 0's last batch goes on with epoch 1
    assert reports == [(0, 0, 2)] and (resumed.epoch, resumed.batch_in_epoch) == (
        1,
        1,
    )  # the monitor keeps the earlier report
    resumed.take(1)
    resumed.take(1)  # epoch 1 ends: the two batches trained after the resume
    assert reports[1] == (1, 16, None)
    middle = []
    inside = DataStream(
        loader(),
        DistEnv(),
        0,
        1,
        lambda epoch, stats: middle.append((epoch, stats["samples"], stats.get("resumed_at_batch"))),
    )
    assert inside.take(2)[1]["key"] == expected[2]
    assert middle == [(0, 8, 1)]  # a resume inside an epoch reports what it trained of it, and where it resumed
    inside.take(2)
    assert middle[1] == (1, 16, None)  # the next epoch is whole again


def test_a_source_that_knows_its_length_is_not_read_again_at_a_resumed_epoch_end():
    from train_clip.data import InMemoryBatches

    class Counting(InMemoryBatches):
        epochs_read: list = []

        def iterate(self, skip_batches=0):
            self.epochs_read.append(self.epoch)
            return super().iterate(skip_batches)

    images, texts = torch.arange(24.0).view(24, 1), torch.arange(24).view(24, 1)
    expected = [
        b["image"] for b in DataStream(InMemoryBatches(images, texts, 8), DistEnv(), 0, 0, lambda e, s: None).take(4)
    ]
    source, reports = Counting(images, texts, 8), []
    resumed = DataStream(
        source,
        DistEnv(),
        0,
        3,
        lambda epoch, stats: reports.append((epoch, stats["samples"], stats["resumed_at_batch"])),
    )
    assert torch.equal(resumed.take(1)[0]["image"], expected[3])
    assert source.epochs_read == [1] and reports == [(0, 0, 3)]


def test_the_monitor_writes_each_epoch_once_across_a_resume(tmp_path):
    """A resumed run finds the epochs reported up to its checkpoint's step and does not write them again; an epoch
    whose report the killed process never wrote is written by the resumed one."""
    import json

    from training.monitor import RunMonitor

    first = RunMonitor(str(tmp_path), DistEnv(), 10, 0, 0, 1, tensorboard=False, progress_bar=False)
    for step, epoch in ((4, 0), (8, 1)):
        first.step = step
        first.epoch_end(epoch, {"samples": 32}, "8", 0)
    first.epoch_end(1, {"samples": 32}, "8", 0)  # the same process never writes an epoch twice either
    resumed = RunMonitor(
        str(tmp_path), DistEnv(), 10, 6, 48, 1, tensorboard=False, progress_bar=False
    )  # checkpoint at step 6
    resumed.step = 6
    resumed.epoch_end(0, {"samples": 0, "resumed_at_batch": 4}, "8", 0)  # its end re-reached: reported already
    resumed.epoch_end(
        1, {"samples": 16, "resumed_at_batch": 2}, "8", 0
    )  # epoch 1's record (step 8) was dropped with step 8
    with open(tmp_path / "epochs.jsonl", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    assert [(r["epoch"], r["samples"], r["step"]) for r in records] == [(0, 32, 4), (1, 16, 6)]
