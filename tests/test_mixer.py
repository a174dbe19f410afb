"""The caption mixer: binomial statistics, determinism across workers, strategies and fallbacks."""

from __future__ import annotations

import math

import pytest
from conftest import make_records

from captiondata.config import DataConfig, MixConfig
from captiondata.loader import CaptionLoader
from captiondata.mixer import choose_caption, uniform

Z_999 = 3.2905  # two-sided 99.9% normal quantile


def binomial_interval(n: int, p: float) -> tuple:
    """99.9% interval for the fraction of successes in n Bernoulli(p) draws (normal approximation)."""
    half = Z_999 * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_realised_fraction_inside_binomial_interval(p):
    n = 20000
    cfg = MixConfig(strategy="mix", p=p, seed=3)
    originals = sum(choose_caption("o", ["r"], cfg, f"key-{i}", epoch=0).emitted == "original" for i in range(n))
    low, high = binomial_interval(n, p)
    assert low <= originals / n <= high


@pytest.mark.parametrize("p,expected", [(0.0, "recap"), (1.0, "original")])
def test_extreme_p_is_exact(p, expected):
    cfg = MixConfig(strategy="mix", p=p)
    assert {choose_caption("o", ["r"], cfg, f"k{i}", 0).emitted for i in range(500)} == {expected}


def test_draw_depends_on_seed_key_and_epoch_only():
    a = [uniform(1, f"k{i}", 0, "p") for i in range(100)]
    assert a == [uniform(1, f"k{i}", 0, "p") for i in range(100)]
    assert a != [uniform(1, f"k{i}", 1, "p") for i in range(100)]
    assert a != [uniform(2, f"k{i}", 0, "p") for i in range(100)]


def test_same_image_gets_different_captions_across_epochs():
    cfg = MixConfig(strategy="mix", p=0.5)
    per_epoch = [[choose_caption("o", ["r"], cfg, f"k{i}", e).emitted for i in range(200)] for e in range(2)]
    assert per_epoch[0] != per_epoch[1]


def test_strategies_and_concat():
    assert choose_caption("o", ["r"], MixConfig(strategy="original"), "k", 0).text == "o"
    assert choose_caption("o", ["r"], MixConfig(strategy="recap"), "k", 0).text == "r"
    concat = choose_caption("o", ["r"], MixConfig(strategy="concat", concat_separator=" | "), "k", 0)
    assert (concat.text, concat.emitted, concat.fallback) == ("o | r", "concat", False)


def test_several_recaptions_are_all_used_uniformly():
    cfg = MixConfig(strategy="recap")
    texts = [choose_caption("o", ["r1", "r2", "r3"], cfg, f"k{i}", 0).text for i in range(3000)]
    for r in ("r1", "r2", "r3"):
        assert 850 < texts.count(r) < 1150


def test_fallback_when_a_source_is_missing():
    recap_only = choose_caption(None, ["r"], MixConfig(strategy="original"), "k", 0)
    assert (recap_only.text, recap_only.fallback, recap_only.drawn) == ("r", True, "original")
    original_only = choose_caption("o", [], MixConfig(strategy="recap"), "k", 0)
    assert (original_only.text, original_only.fallback) == ("o", True)
    assert choose_caption("o", [], MixConfig(strategy="concat"), "k", 0).fallback
    with pytest.raises(ValueError):
        choose_caption(None, [], MixConfig(), "k", 0)


def _choices(spec: str, workers: int, epoch: int = 0) -> dict:
    """key -> emitted text over one epoch of a loader with ``workers`` workers."""
    cfg = DataConfig(builder="none", train_shards=spec, num_workers=workers, shuffle_buffer=8)
    loader = CaptionLoader(cfg, MixConfig(p=0.5, seed=11), batch_size=4, drop_last=False)
    loader.set_epoch(epoch)
    out = {}
    for batch in loader:
        out.update(zip(batch["key"], batch["text"]))
    return out, loader.epoch_stats()


def test_choices_identical_with_0_1_2_workers(shard_factory):
    spec = shard_factory(make_records(60), per_shard=10)
    results = [_choices(spec, w) for w in (0, 1, 2)]
    assert len(results[0][0]) == 60
    assert results[0][0] == results[1][0] == results[2][0]
    assert results[0][1] == results[1][1] == results[2][1]


def test_loader_logs_realised_fraction(shard_factory, caplog):
    spec = shard_factory(make_records(40), per_shard=10)
    with caplog.at_level("DEBUG", logger="captiondata.loader"):  # per rank at DEBUG; the trainer logs the epoch at INFO
        choices, stats = _choices(spec, 0)
    expected = sum(text.startswith("alt text") for text in choices.values()) / 40
    assert stats["original_fraction"] == pytest.approx(expected)
    assert stats["drawn_original_fraction"] == pytest.approx(expected)
    assert "original fraction" in caplog.text


def test_concat_epochs_report_no_original_fraction():
    from captiondata.counters import summarize

    stats = summarize({"samples": 10, "emitted_concat": 9, "emitted_original": 1, "fallback_to_original": 1})
    assert stats["original_fraction"] is None and stats["concat_fraction"] == pytest.approx(0.9)
    mixed = summarize({"samples": 4, "emitted_original": 3, "emitted_recap": 1})
    assert mixed["original_fraction"] == pytest.approx(0.75) and mixed["concat_fraction"] == 0.0
