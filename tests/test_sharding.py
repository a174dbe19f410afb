"""Rank/worker sharding: every sample exactly once in finite mode, equal batch counts when resampled."""

from __future__ import annotations

import logging

from conftest import make_records

from captiondata.config import DataConfig, MixConfig
from captiondata.loader import CaptionLoader


def loader(spec: str, rank: int, world: int, workers: int, **overrides) -> CaptionLoader:
    """A loader over ``spec`` for one rank."""
    cfg = DataConfig(builder="none", train_shards=spec, num_workers=workers, shuffle_buffer=4, **overrides)
    return CaptionLoader(cfg, MixConfig(p=0.5), batch_size=3, rank=rank, world_size=world, drop_last=False)


def test_finite_mode_partitions_samples_over_ranks_and_workers(shard_factory):
    spec = shard_factory(make_records(80), per_shard=10)
    keys = []
    for rank in range(2):
        keys += [k for batch in loader(spec, rank, 2, 2) for k in batch["key"]]
    assert sorted(keys) == [f"s{i:05d}" for i in range(80)]


def test_epochs_reshuffle_and_repeat_deterministically(shard_factory):
    spec = shard_factory(make_records(40), per_shard=10)
    run = loader(spec, 0, 1, 0)
    order = []
    for epoch in (0, 1, 0):
        run.set_epoch(epoch)
        order.append([k for batch in run for k in batch["key"]])
    assert order[0] == order[2] and order[0] != order[1]


def test_resampled_mode_gives_every_rank_the_same_batch_count(shard_factory):
    spec = shard_factory(make_records(25), per_shard=5)
    counts = []
    for rank in range(3):
        run = loader(spec, rank, 3, 2, resampled=True, epoch_samples=100)
        batches = list(run)
        assert all(len(b["key"]) == 3 for b in batches)
        counts.append(len(batches))
        assert len(batches) == len(run)
    assert len(set(counts)) == 1 and counts[0] >= 100 // (3 * 3)


def test_warns_when_fewer_shards_than_workers_times_ranks(shard_factory, caplog):
    spec = shard_factory(make_records(20), per_shard=10)  # 2 shards: every rank gets one, not every worker
    with caplog.at_level(logging.WARNING, logger="captiondata.loader"):
        loader(spec, 0, 2, 2)
    assert "only 2 shard(s) for 2 worker(s) x 2 rank(s)" in caplog.text
