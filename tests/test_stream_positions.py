"""training.stream against hand-counted positions: a list source whose batches are named (epoch, index), so every
position, roll-over, resume and epoch report can be checked against values written out here (issue 30: the stream's
resume logic under mutation testing)."""

from __future__ import annotations

import logging

import pytest

from harness_infra.errors import ConfigError
from training.distributed import DistEnv
from training.stream import DataStream, batches_per_epoch, summed_epoch_stats, trained_counts, with_trained


class ListSource:
    """``per_epoch`` batches per epoch, batch i of epoch e = {"id": (e, i), "source": sources}; ``sized`` decides
    whether the stream may ask ``len``. Records every (epoch, skip) it is asked to iterate."""

    def __init__(self, per_epoch, sources=("original", "recap"), sized=False):
        self.per_epoch, self.sources, self.sized = per_epoch, list(sources), sized
        self.epoch, self.served, self.calls = 0, 0, []

    def __len__(self):
        if not self.sized:
            raise TypeError("unsized")
        return self.per_epoch

    def set_epoch(self, epoch):
        self.epoch, self.served = epoch, 0

    def iterate(self, skip_batches=0):
        self.calls.append((self.epoch, skip_batches))
        for index in range(skip_batches, self.per_epoch):
            self.served += len(self.sources)
            yield {"id": (self.epoch, index), "source": list(self.sources)}

    def epoch_stats(self):
        return {"samples": self.served, "skipped_total": 0, "skipped": {}, "original_fraction": 0.25}


def stream_of(source, epoch=0, batch=0):
    reports = []
    return DataStream(source, DistEnv(), epoch, batch, lambda e, stats: reports.append((e, stats))), reports


@pytest.mark.parametrize("sized", [False, True])
def test_batches_follow_epoch_order_and_positions_count_every_batch(sized):
    stream, reports = stream_of(ListSource(3, sized=sized))
    stream.take(2)
    assert (stream.epoch, stream.batch_in_epoch) == (0, 2)
    ids = [(0, 0), (0, 1)] + [stream.next_batch()["id"] for _ in range(5)]
    assert ids == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    assert (stream.epoch, stream.batch_in_epoch) == (2, 1)
    assert [e for e, _ in reports] == [0, 1]
    assert reports[0][1]["samples"] == 6 and reports[0][1]["samples_read"] == 6  # 3 batches x 2 samples
    assert reports[0][1]["original_fraction"] == 0.5 and reports[0][1]["read_original_fraction"] == 0.25
    assert "resumed_at_batch" not in reports[0][1] and "resumed_at_batch" not in reports[1][1]


@pytest.mark.parametrize("sized", [False, True])
def test_a_resume_inside_an_epoch_skips_exactly_the_trained_batches(sized):
    source = ListSource(4, sized=sized)
    stream, reports = stream_of(source, epoch=2, batch=1)
    ids = [b["id"] for b in stream.take(5)]
    assert ids == [(2, 1), (2, 2), (2, 3), (3, 0), (3, 1)]
    assert source.calls == [(2, 1), (3, 0)]
    assert [(e, s["samples"], s.get("resumed_at_batch")) for e, s in reports] == [(2, 6, 1)]
    stream.take(2)
    stream.take(1)  # epoch 3 closes: a whole epoch, not resumed
    assert [(e, s["samples"], s.get("resumed_at_batch")) for e, s in reports][1] == (3, 8, None)


def test_a_resume_at_a_known_epoch_end_opens_the_next_epoch_without_reading_the_old_one():
    source = ListSource(3, sized=True)
    stream, reports = stream_of(source, epoch=4, batch=3)
    assert stream.next_batch()["id"] == (5, 0)
    assert source.calls == [(5, 0)]
    assert reports == [
        (
            4,
            {
                "samples": 0,
                "samples_read": 0,
                "skipped_total": 0,
                "skipped": {},
                "original_fraction": None,
                "resumed_at_batch": 3,
            },
        )
    ]
    assert (stream.epoch, stream.batch_in_epoch) == (5, 1)
    stream.take(3)  # epoch 5 closes whole: its report is not marked resumed
    assert reports[1][0] == 5 and reports[1][1]["samples"] == 6 and "resumed_at_batch" not in reports[1][1]


def test_a_resume_at_a_known_epoch_end_logs_where_it_goes_on(caplog):
    stream, _ = stream_of(ListSource(3, sized=True), epoch=4, batch=3)
    with caplog.at_level(logging.INFO, logger="training.stream"):
        stream.next_batch()
    assert [r.getMessage() for r in caplog.records] == [
        "resumed at the end of epoch 4 (batch 3): going on with epoch 5"
    ]


def test_a_resume_past_a_known_epoch_end_warns_that_the_data_changed(caplog):
    stream, reports = stream_of(ListSource(3, sized=True), epoch=0, batch=5)
    with caplog.at_level(logging.WARNING, logger="training.stream"):
        assert stream.next_batch()["id"] == (1, 0)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "resumed at batch 5 of epoch 0, which has 3 batches here: the data, batch size or rank count changed since the checkpoint"
    ]
    assert reports[0][0] == 0 and reports[0][1]["resumed_at_batch"] == 5


def test_a_resume_exactly_at_the_last_batch_of_a_known_epoch_does_not_warn(caplog):
    stream, _ = stream_of(ListSource(3, sized=True), epoch=0, batch=3)
    with caplog.at_level(logging.WARNING, logger="training.stream"):
        stream.next_batch()
    assert "changed since the checkpoint" not in caplog.text


def test_a_resume_at_an_unknown_epoch_end_reads_it_empty_and_reports_it_resumed():
    source = ListSource(3, sized=False)
    stream, reports = stream_of(source, epoch=1, batch=3)
    assert stream.next_batch()["id"] == (2, 0)
    assert source.calls == [(1, 3), (2, 0)]
    assert [(e, s["samples"], s["resumed_at_batch"]) for e, s in reports] == [(1, 0, 3)]


def test_a_partial_epoch_end_reports_what_was_trained_and_moves_to_the_next_epoch():
    stream, reports = stream_of(ListSource(5))
    stream.take(2)
    stream.epoch_end_partial()
    assert [(e, s["samples"]) for e, s in reports] == [(0, 4)]
    assert (stream.epoch, stream.batch_in_epoch) == (1, 0)
    stream.epoch_end_partial()  # nothing read since: no report
    assert len(reports) == 1
    assert stream.next_batch()["id"] == (1, 0)


def test_a_partial_epoch_end_after_a_resume_says_where_it_resumed():
    stream, reports = stream_of(ListSource(5), epoch=0, batch=2)
    stream.take(1)
    stream.epoch_end_partial()
    assert [(e, s["samples"], s.get("resumed_at_batch")) for e, s in reports] == [(0, 2, 2)]
    stream.take(1)
    stream.epoch_end_partial()
    assert [(e, s["samples"], s.get("resumed_at_batch")) for e, s in reports][1] == (1, 2, None)


@pytest.mark.parametrize("sized", [False, True])
def test_an_empty_epoch_is_one_line_naming_the_epoch_and_the_counts(sized):
    stream, _ = stream_of(ListSource(0, sized=sized))
    with pytest.raises(ConfigError) as error:
        stream.next_batch()
    assert str(error.value) == (
        "epoch 0 gave no full batch: the loader read 0 valid samples (skipped none); every rank needs at least "
        "one full batch per epoch: lower the batch size, add data, or set data.resampled=true"
    )


def test_an_empty_epoch_names_the_skipped_samples():
    class Skipping(ListSource):
        def epoch_stats(self):
            return {**super().epoch_stats(), "skipped": {"undecodable_image": 3}}

    stream, _ = stream_of(Skipping(0))
    with pytest.raises(
        ConfigError,
        match=r"^epoch 0 gave no full batch: the loader read 0 valid samples \(skipped \{'undecodable_image': 3\}\)",
    ):
        stream.next_batch()


def test_an_epoch_that_empties_after_data_is_reported_then_the_next_empty_one_fails():
    class Once(ListSource):
        def iterate(self, skip_batches=0):
            if self.epoch > 0:
                return iter(())
            return super().iterate(skip_batches)

    stream, reports = stream_of(Once(1))
    assert stream.next_batch()["id"] == (0, 0)
    with pytest.raises(ConfigError, match=r"^epoch 1 gave no full batch"):
        stream.next_batch()
    assert [e for e, _ in reports] == [0, 1]


def test_trained_counts_and_with_trained_by_hand():
    assert trained_counts({"source": ["original", "recap", "original"]}) == {"samples": 3, "original": 2, "recap": 1}
    assert trained_counts({"image": [1, 2, 3, 4]}) == {"samples": 4}
    assert trained_counts({}) == {"samples": 0}
    loader = {"samples": 10, "original_fraction": 0.3, "skipped": {}}
    assert with_trained(loader, {"samples": 8, "original": 6, "recap": 2}) == {
        "samples": 8,
        "samples_read": 10,
        "read_original_fraction": 0.3,
        "skipped": {},
        "original_fraction": 0.75,
        "concat_fraction": 0.0,
    }
    concat = with_trained(loader, {"samples": 4, "concat": 4})
    assert concat["original_fraction"] is None and concat["concat_fraction"] == 1.0
    plain = with_trained(loader, {"samples": 4})
    assert plain["original_fraction"] == 0.3 and "concat_fraction" not in plain  # no sources: the loader's own
    recap_only = with_trained(loader, {"samples": 4, "recap": 4})  # p = 0: no original trained
    assert recap_only["original_fraction"] == 0.0 and recap_only["concat_fraction"] == 0.0
    originals_only = with_trained(loader, {"samples": 4, "original": 4})
    assert originals_only["original_fraction"] == 1.0
    empty = with_trained(loader, {"samples": 0, "original": 0})
    assert empty["original_fraction"] is None and empty["concat_fraction"] is None


def test_batches_per_epoch_and_single_rank_stats():
    assert batches_per_epoch(ListSource(7, sized=True)) == 7
    assert batches_per_epoch(ListSource(7, sized=False)) is None
    source = ListSource(2)
    list(source.iterate())
    assert summed_epoch_stats(source, DistEnv())["samples"] == 4


def test_a_partial_epoch_end_closes_the_open_iterator():
    closed, held = [], []

    class Closing(ListSource):
        def iterate(self, skip_batches=0):
            def batches():
                try:
                    yield from super(Closing, self).iterate(skip_batches)
                finally:
                    closed.append(self.epoch)  # runs when the generator is closed (a loader's workers stop here)

            # a reference elsewhere (as a loader's worker pool holds one): no close by garbage collection
            held.append(batches())
            return held[-1]

    stream, _ = stream_of(Closing(5))
    stream.take(2)
    stream.epoch_end_partial()
    assert closed == [0]


class TwoRanks:
    """Rank 0's view of a two-rank job: the other rank contributes ``other`` to every gather and ``other_has`` to
    every all-ranks check (training.distributed's collectives replaced by their two-rank results)."""

    def __init__(self, monkeypatch, other, other_has=lambda: True):
        import training.stream as stream_module

        self.other, self.gathered = other, []
        monkeypatch.setattr(stream_module, "gather_objects", self.gather)

        def all_ranks_have(flag, env):
            assert env.world_size == 2
            return flag and other_has()

        monkeypatch.setattr(stream_module, "all_ranks_have", all_ranks_have)

    def gather(self, obj, env):
        assert env.world_size == 2
        self.gathered.append(obj)
        return [obj, self.other(obj)]


def test_trained_counts_are_summed_over_ranks(monkeypatch):
    TwoRanks(monkeypatch, other=lambda mine: {"samples": 10, "original": 1, "recap": 9} if "samples" in mine else {})
    reports = []
    stream = DataStream(ListSource(2, sized=True), DistEnv(rank=0, world_size=2), 0, 0, lambda e, s: reports.append(s))
    stream.take(3)
    assert reports[0]["samples"] == 4 + 10 and reports[0]["original_fraction"] == (2 + 1) / 14


def test_an_unsized_source_ends_the_epoch_on_every_rank_when_one_runs_out(monkeypatch):
    left = iter([True, False, True])  # the other rank has one batch in epoch 0, then runs out; epoch 1 goes on
    TwoRanks(monkeypatch, other=lambda mine: {}, other_has=lambda: next(left, False))
    reports = []
    stream = DataStream(ListSource(3, sized=False), DistEnv(rank=0, world_size=2), 0, 0, lambda e, s: reports.append(s))
    assert stream.synchronize
    assert stream.next_batch()["id"] == (0, 0)
    assert stream.next_batch()["id"] == (1, 0)  # rank 0 still had (0, 1): dropped with the other rank's end
    assert reports[0]["samples"] == 2
    sized = DataStream(ListSource(3, sized=True), DistEnv(rank=0, world_size=2), 0, 0, lambda e, s: None)
    assert not sized.synchronize  # equal lengths on every rank: no per-batch collective


def test_loader_totals_are_summed_over_ranks_when_the_source_exposes_them(monkeypatch):
    class WithTotals(ListSource):
        def epoch_totals(self):
            return {"samples": 4, "emitted_original": 1}

    TwoRanks(monkeypatch, other=lambda mine: {"samples": 6, "emitted_original": 5})
    stats = summed_epoch_stats(WithTotals(2), DistEnv(rank=0, world_size=2))
    assert stats["samples"] == 10 and stats["original_fraction"] == 0.6
    plain = ListSource(2)
    assert summed_epoch_stats(plain, DistEnv(rank=0, world_size=2))["samples"] == 0  # no totals: this rank's own


def test_an_epoch_empty_on_some_rank_says_so_over_the_ranks(monkeypatch):
    TwoRanks(monkeypatch, other=lambda mine: {}, other_has=lambda: False)
    stream = DataStream(ListSource(3, sized=False), DistEnv(rank=0, world_size=2), 0, 0, lambda e, s: None)
    with pytest.raises(
        ConfigError,
        match=r"^epoch 0 gave no full batch to some rank: the loader read 2 valid samples over 2 ranks "
        r"\(skipped none\); every rank needs",
    ):
        stream.next_batch()


def test_a_partial_epoch_end_with_a_plain_iterator_source_has_nothing_to_close():
    class Plain(ListSource):
        def iterate(self, skip_batches=0):
            return iter(list(super().iterate(skip_batches)))  # a list iterator: no close()

    stream, reports = stream_of(Plain(4))
    stream.take(1)
    stream.epoch_end_partial()
    assert [(e, s["samples"]) for e, s in reports] == [(0, 2)]
