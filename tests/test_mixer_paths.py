"""The mixer's two draws, checked where training reads them: the coin (original with probability p, in that direction)
and the choice among several recaptions (uniform, and independent of the coin), at p in {0.2, 0.5, 0.8}, in
``choose_caption``, in the CaptionLoader, in CLIP's loader factory and in DiT's feature batches.

The references are distribution-free: a binomial interval for the fraction of originals, a chi-square goodness-of-fit
test for the recaption index, and a chi-square contingency test of the index against the coin's half (scipy)."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Iterable, List, Tuple

import pytest
from conftest import jpeg_bytes
from scipy.stats import chi2, chi2_contingency

from captiondata.config import DataConfig, MixConfig
from captiondata.loader import CaptionLoader
from captiondata.mixer import choose_caption, uniform
from captiondata.records import Record

Z_999 = 3.2905  # two-sided 99.9% normal quantile
PS = [0.2, 0.5, 0.8]


def record(i: int, n_recaps: int, image: bytes = b"") -> Record:
    return Record(
        key=f"k{i:05d}",
        image=image or jpeg_bytes(i),
        original=f"orig {i}",
        recaptions=[f"recap{j} {i}" for j in range(n_recaps)],
        references=[f"orig {i}"],
    )


def check_mix(draws: Iterable[Tuple[str, int, str]], p: float, n_recaps: int, seed: int) -> None:
    """draws: (key, epoch, text trained on). Asserts the coin's direction and the recaption choice's law."""
    draws = list(draws)
    n = len(draws)
    originals = sum(text.startswith("orig ") for _, _, text in draws)
    half = Z_999 * math.sqrt(p * (1 - p) / n)
    assert abs(originals / n - p) <= half, f"original fraction {originals / n:.3f} with p = {p} (n = {n})"
    recaps: List[Tuple[int, int]] = []  # (recaption index, coin in the upper half of [p, 1))
    for key, epoch, text in draws:
        if text.startswith("recap"):
            coin = uniform(seed, key, epoch, "p")
            assert coin >= p, "a recaption was emitted although the coin said original"
            recaps.append((int(text[5:].split()[0]), int(coin >= (1 + p) / 2)))
    counts = Counter(index for index, _ in recaps)
    expected = len(recaps) / n_recaps
    statistic = sum((counts.get(j, 0) - expected) ** 2 / expected for j in range(n_recaps))
    assert statistic < chi2.ppf(0.999, n_recaps - 1), f"recaption counts {sorted(counts.items())} are not uniform"
    table = [[sum(1 for index, upper in recaps if index == j and upper == h) for j in range(n_recaps)] for h in (0, 1)]
    assert chi2_contingency(table)[1] > 0.001, f"the recaption choice depends on the coin: {table}"


@pytest.mark.parametrize("n_recaps", [2, 3])
@pytest.mark.parametrize("p", PS)
def test_choose_caption_coin_and_recaption_choice(p, n_recaps):
    cfg = MixConfig(strategy="mix", p=p, seed=7)
    draws = []
    for i in range(6000):
        r = record(i, n_recaps, image=b"x")
        draws.append((r.key, 0, choose_caption(r.original, r.recaptions, cfg, r.key, 0).text))
    check_mix(draws, p, n_recaps, seed=7)


def loader_draws(loader, epochs: int) -> List[Tuple[str, int, str]]:
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            out.extend((key, epoch, text) for key, text in zip(batch["key"], batch["text"]))
    return out


@pytest.fixture(scope="module")
def three_recap_shards(tmp_path_factory) -> str:
    from captiondata.writer import ShardWriter

    folder = tmp_path_factory.mktemp("three_recaps")
    writer = ShardWriter(str(folder), "train", max_count=50)
    writer.write_all([record(i, 3) for i in range(200)])
    writer.close()
    return str(folder / "train-*.tar")


@pytest.mark.parametrize("p", PS)
def test_caption_loader_coin_and_recaption_choice(three_recap_shards, p):
    data = DataConfig(builder="none", train_shards=three_recap_shards, num_workers=0, shuffle_buffer=16)
    loader = CaptionLoader(data, MixConfig(p=p, seed=5), batch_size=25, drop_last=False)
    draws = loader_draws(loader, 8)
    assert len(draws) == 1600
    check_mix(draws, p, 3, seed=5)
    stats = loader.epoch_stats()  # the last epoch's counters report the same direction of p
    assert abs(stats["original_fraction"] - p) <= Z_999 * math.sqrt(p * (1 - p) / 200)


@pytest.mark.parametrize("p", PS)
def test_clip_loader_factory_coin_and_recaption_choice(three_recap_shards, p):
    import torch

    from train_clip.data import LoaderRequest, caption_loader_factory

    data = DataConfig(builder="none", train_shards=three_recap_shards, num_workers=0, shuffle_buffer=16)
    loader = caption_loader_factory(data, MixConfig(p=p, seed=9))(
        LoaderRequest(0, 16, lambda im: torch.zeros(1), list, 25, 0, 1, 3)
    )
    check_mix(loader_draws(loader, 8), p, 3, seed=9)


@pytest.mark.parametrize("p", PS)
def test_dit_feature_batches_coin_and_recaption_choice(tmp_path, p):
    from captiondata.builders.scenes import scene_records
    from captiondata.writer import ShardWriter
    from train_dit.config import DitModelConfig, ImageSpaceSpec
    from train_dit.features import FeatureBatches, ensure_features
    from train_dit.image import ImageSpace
    from train_dit.text import TextEncoder

    records = [
        dataclasses.replace(r, original=f"orig {i}", recaptions=[f"recap{j} {i}" for j in range(3)])
        for i, r in enumerate(scene_records("train", 24))
    ]
    writer = ShardWriter(str(tmp_path / "shards"), "train", max_count=12)
    writer.write_all(records)
    writer.close()
    data = DataConfig(
        builder="none", train_shards=str(tmp_path / "shards" / "train-*.tar"), num_workers=0, shuffle_buffer=8
    )
    mix = MixConfig(p=p, seed=11)
    text = TextEncoder(DitModelConfig().text_encoder)
    store = ensure_features(data, mix, text, ImageSpace(ImageSpaceSpec()), 32, True, None, 16)
    batches = FeatureBatches(
        CaptionLoader(data, mix, tokenize=None, batch_size=8, seed=5, image_features=store.images), store
    )
    draws = []
    for epoch in range(50):
        batches.set_epoch(epoch)
        for batch in batches.iterate():
            draws.extend((key, epoch, t) for key, t in zip(batch["key"], batch["text"]))
    assert len(draws) == 1200
    check_mix(draws, p, 3, seed=11)


@pytest.mark.parametrize("strategy", ["original", "mix", "concat"])
def test_fallback_to_several_recaptions_keeps_the_draw_and_chooses_uniformly(strategy):
    # no original: every sample falls back to a recaption, still chosen uniformly by its own draw; ``drawn`` keeps the
    # coin's verdict (None for concat, which draws no coin)
    cfg = MixConfig(strategy=strategy, p=1.0, seed=2)
    counts = Counter()
    for i in range(3000):
        choice = choose_caption(None, ["r0", "r1", "r2"], cfg, f"k{i}", 1)
        assert (choice.emitted, choice.fallback) == ("recap", True)
        assert choice.drawn == {"original": "original", "mix": "original", "concat": None}[strategy]
        counts[choice.text] += 1
    statistic = sum((counts[r] - 1000) ** 2 / 1000 for r in ("r0", "r1", "r2"))
    assert statistic < chi2.ppf(0.999, 2), counts


@pytest.mark.parametrize("strategy", ["recap", "mix"])
def test_fallback_to_the_original_keeps_the_draw(strategy):
    choice = choose_caption("o", [], MixConfig(strategy=strategy, p=0.0), "k", 0)
    assert (choice.text, choice.drawn, choice.emitted, choice.fallback) == ("o", "recap", "original", True)
