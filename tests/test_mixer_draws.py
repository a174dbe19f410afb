"""The mixer's draws pinned to their documented definition (captiondata/mixer.py's module docstring): a keyed BLAKE2b
of (seed, epoch, purpose, key), 8 bytes big-endian over 2^64, purpose "p" for the coin and "which-recap" for the
recaption index. Computed here with hashlib, so a change to any input of a draw (which silently changes every past
run's captions) fails, and every field of the Choice is checked on each path."""

from __future__ import annotations

import hashlib

import pytest

from captiondata.config import MixConfig
from captiondata.mixer import Choice, choose_caption, uniform

KEYS = [f"k{i:04d}" for i in range(300)] + [
    "sample/with spaces",
    "ünïcode-key",
    "bad\udcffbytes",
]  # a lone surrogate: os.fsdecode


def reference_uniform(seed: int, key: str, epoch: int, purpose: str) -> float:
    message = f"{seed}\x1f{epoch}\x1f{purpose}\x1f{key}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(message, digest_size=8).digest(), "big") / 2.0**64


@pytest.mark.parametrize("seed, epoch, purpose", [(0, 0, "p"), (7, 3, "which-recap"), (123, 1, "p")])
def test_uniform_is_the_documented_blake2b_draw(seed, epoch, purpose):
    assert [uniform(seed, k, epoch, purpose) for k in KEYS] == [
        reference_uniform(seed, k, epoch, purpose) for k in KEYS
    ]


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_mix_uses_the_p_draw_for_the_coin_and_the_which_recap_draw_for_the_index(p):
    cfg = MixConfig(strategy="mix", p=p, seed=5)
    recaps = ["r0", "r1", "r2"]
    for epoch in (0, 2):
        for key in KEYS:
            choice = choose_caption("o", recaps, cfg, key, epoch)
            if reference_uniform(5, key, epoch, "p") < p:
                assert choice == Choice("o", "original", "original", False)
            else:
                index = int(reference_uniform(5, key, epoch, "which-recap") * 3)
                assert choice == Choice(recaps[index], "recap", "recap", False)
            assert choice.fallback is False


def test_fixed_strategies_and_concat_fields():
    cfg = MixConfig(strategy="concat", seed=9, concat_separator=" | ")
    for epoch in (0, 4):
        for key in KEYS[:50]:
            index = int(reference_uniform(9, key, epoch, "which-recap") * 2)
            choice = choose_caption("o", ["r0", "r1"], cfg, key, epoch)
            assert choice == Choice("o | " + ["r0", "r1"][index], None, "concat", False) and choice.fallback is False
    original = choose_caption("o", ["r0"], MixConfig(strategy="original"), "k", 0)
    assert original == Choice("o", "original", "original", False) and original.fallback is False
    recap = choose_caption("o", ["r0"], MixConfig(strategy="recap"), "k", 0)
    assert recap == Choice("r0", "recap", "recap", False) and recap.fallback is False


@pytest.mark.parametrize("strategy", ["concat", "mix", "recap"])
def test_fallbacks_draw_the_recaption_with_the_same_inputs(strategy):
    cfg = MixConfig(strategy=strategy, p=1.0, seed=4)
    for epoch in (0, 3):
        for key in KEYS[:60]:
            choice = choose_caption(None, ["r0", "r1", "r2", "r3"], cfg, key, epoch)
            index = int(reference_uniform(4, key, epoch, "which-recap") * 4)
            drawn = {"concat": None, "mix": "original", "recap": "recap"}[strategy]
            if strategy == "recap":
                assert choice == Choice(["r0", "r1", "r2", "r3"][index], "recap", "recap", False)
            else:
                assert (
                    choice == Choice(["r0", "r1", "r2", "r3"][index], drawn, "recap", True) and choice.fallback is True
                )


def test_neither_source_is_a_one_line_error_naming_the_sample():
    with pytest.raises(ValueError) as caught:
        choose_caption(None, [], MixConfig(), "s00042", 0)
    assert str(caught.value) == "sample 's00042' has neither an original caption nor a recaption"
