"""Caption reductions and positives (captiondata.mixer.reduce_text, MixConfig.recap_reduce / original_reduce /
positives): binomial share of originals under every reduction, chi-square uniformity of the sub-caption window and
the token-span start, the exact documented draws (BLAKE2b of (seed, epoch, purpose, key), as tests/test_mixer_draws.py
pins the coin), purity in (seed, key, epoch), exact truncation, and the one-line ConfigErrors."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import pytest
from scipy.stats import chisquare

from captiondata.config import MixConfig
from captiondata.mixer import choose_caption, choose_captions, reduce_text, sentences
from captiondata.realised import check_mixture, realised_mixture
from harness_infra.errors import ConfigError
from harness_infra.stagecache import content_hash, key_fields

Z_999 = 3.2905  # two-sided 99.9% normal quantile
CHI2_ALPHA = 1e-3  # a uniform draw fails a chi-square test at this level once in a thousand seeds
KEYS = [f"s{i:05d}" for i in range(6000)]
FIVE = "One red cube. Two blue balls! A green star? A yellow cross.\nA black ring."  # 5 sentences
WORDS = " ".join(f"w{i}" for i in range(20))  # 20 words


def reference_uniform(seed: int, key: str, epoch: int, purpose: str) -> float:
    """The documented draw, written out with hashlib."""
    message = f"{seed}\x1f{epoch}\x1f{purpose}\x1f{key}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(message, digest_size=8).digest(), "big") / 2.0**64


def binomial_ok(hits: int, n: int, p: float) -> bool:
    """hits / n inside the 99.9% normal interval of Bernoulli(p)."""
    half = Z_999 * math.sqrt(p * (1 - p) / n)
    return p - half <= hits / n <= p + half


REDUCED = [
    dict(recap_reduce="sub_caption"),
    dict(recap_reduce="sub_caption", recap_sentences=2),
    dict(recap_reduce="token_span", recap_tokens=4),
    dict(recap_reduce="truncate", recap_tokens=4),
    dict(recap_reduce="token_span", recap_tokens=3, original_reduce="truncate", original_tokens=2),
]


@pytest.mark.parametrize("reduce", REDUCED)
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_share_of_originals_is_p_under_every_reduction(reduce, p):
    cfg = MixConfig(strategy="mix", p=p, seed=3, **reduce)
    original = "alt text of the web page with many words in it"
    choices = [choose_caption(original, [FIVE + " " + WORDS], cfg, k, 0) for k in KEYS]
    originals = sum(c.emitted == "original" for c in choices)
    assert binomial_ok(originals, len(KEYS), p)
    # the coin is the one of the whole-caption mixer: reductions shorten texts, they never change which source
    plain = MixConfig(strategy="mix", p=p, seed=3)
    assert [c.emitted for c in choices] == [choose_caption(original, ["r"], plain, k, 0).emitted for k in KEYS]


def test_the_realised_mixture_guard_passes_with_reductions_and_positives():
    cfg = MixConfig(strategy="mix", p=0.5, seed=1, recap_reduce="sub_caption", positives=2)
    choices = [c for k in KEYS for c in choose_captions("o", [FIVE], cfg, k, 0)]
    drawn = sum(c.drawn == "original" for c in choices)
    counts = {
        "trained": len(choices),
        "trained_original": sum(c.emitted == "original" for c in choices),
        "trained_concat": 0,
        "read": len(choices),
        "drawn_original": drawn,
        "drawn_recap": len(choices) - drawn,
        "fallback_to_original": 0,
        "fallback_to_recap": 0,
        "no_original": 0,
        "no_recaption": 0,
    }
    mixture = realised_mixture(counts, cfg.strategy, cfg.p_original)
    check_mixture(mixture)  # raises LabelError when the share is outside the binomial tolerance
    assert abs(mixture["realised_original_fraction"] - 0.5) < 0.02


@pytest.mark.parametrize("k, windows", [(1, 5), (2, 4), (3, 3)])
def test_sub_caption_window_is_uniform_over_the_sentence_positions(k, windows):
    cfg = MixConfig(strategy="recap", seed=7, recap_reduce="sub_caption", recap_sentences=k)
    pieces = sentences(FIVE)
    assert len(pieces) == 5
    windows_text = [" ".join(pieces[s : s + k]) for s in range(windows)]
    counts = [0] * windows
    for key in KEYS:
        counts[windows_text.index(choose_caption("o", [FIVE], cfg, key, 0).text)] += 1
    assert chisquare(counts).pvalue > CHI2_ALPHA, counts


def test_token_span_start_is_uniform_and_the_span_is_consecutive():
    cfg = MixConfig(strategy="recap", seed=2, recap_reduce="token_span", recap_tokens=5)
    words = WORDS.split()
    counts = [0] * (len(words) - 5 + 1)
    for key in KEYS:
        span = choose_caption("o", [WORDS], cfg, key, 1).text.split()
        start = words.index(span[0])
        assert span == words[start : start + 5]
        counts[start] += 1
    assert chisquare(counts).pvalue > CHI2_ALPHA, counts


def test_draws_are_the_documented_blake2b_draws_per_purpose_and_positive():
    sub = MixConfig(strategy="recap", seed=5, recap_reduce="sub_caption")
    span = MixConfig(strategy="original", seed=5, original_reduce="token_span", original_tokens=4)
    pieces, words = sentences(FIVE), WORDS.split()
    for key in KEYS[:300]:
        for epoch in (0, 3):
            for j in (0, 1, 2):
                suffix = f"#{j}" if j else ""
                start = int(reference_uniform(5, key, epoch, "sub_caption-recap" + suffix) * 5)
                assert choose_caption("o", [FIVE], sub, key, epoch, j).text == pieces[start]
                start = int(reference_uniform(5, key, epoch, "token_span-original" + suffix) * 17)
                assert choose_caption(WORDS, ["r"], span, key, epoch, j).text == " ".join(words[start : start + 4])


def test_each_choice_is_a_pure_function_of_seed_key_and_epoch():
    def texts(epoch: int, seed: int = 9) -> list:
        cfg = MixConfig(strategy="mix", p=0.3, seed=seed, recap_reduce="sub_caption", positives=2)
        return [tuple(c.text for c in choose_captions("o", [FIVE, WORDS], cfg, k, epoch)) for k in KEYS[:500]]

    first = texts(0)
    assert first == texts(0)  # same inputs, same texts
    changed = sum(a != b for a, b in zip(first, texts(1)))
    assert changed > 300  # another epoch draws again for most keys
    assert sum(a != b for a, b in zip(first, texts(0, seed=10))) > 300  # and so does another seed


def test_truncate_gives_exactly_the_first_k_words_and_short_captions_stay_whole():
    cfg = MixConfig(strategy="recap", recap_reduce="truncate", recap_tokens=7)
    for key in KEYS[:50]:
        assert choose_caption("o", [WORDS], cfg, key, 0).text == " ".join(WORDS.split()[:7])
    short = "a  red\tcube"  # 3 words: kept whole, its own whitespace untouched
    assert choose_caption("o", [short], cfg, "k", 0).text == short
    exact = MixConfig(strategy="recap", recap_reduce="truncate", recap_tokens=3)
    assert choose_caption("o", [short], exact, "k", 0).text == short  # exactly K words: whole too
    one = MixConfig(strategy="recap", recap_reduce="sub_caption", recap_sentences=5)
    assert choose_caption("o", [FIVE], one, "k", 0).text == FIVE  # 5 sentences, K = 5: whole
    span = MixConfig(strategy="recap", recap_reduce="token_span", recap_tokens=20)
    assert choose_caption("o", [WORDS], span, "k", 0).text == WORDS


def test_reductions_apply_to_their_own_source_and_to_each_part_of_concat():
    cfg = MixConfig(strategy="concat", concat_separator=" | ", original_reduce="truncate", original_tokens=2)
    assert choose_caption("w0 w1 w2", ["r0 r1 r2"], cfg, "k", 0).text == "w0 w1 | r0 r1 r2"
    both = MixConfig(
        strategy="concat", recap_reduce="truncate", recap_tokens=1, original_reduce="truncate", concat_separator=" | "
    )
    assert choose_caption("w0 w1 w2", ["r0 r1 r2"], both, "k", 0).text == "w0 w1 w2 | r0"
    fallback = choose_caption(
        None, ["r0 r1 r2"], MixConfig(strategy="original", recap_reduce="truncate", recap_tokens=1), "k", 0
    )
    assert (fallback.text, fallback.fallback) == ("r0", True)  # a fallback is reduced as the source it falls back to


def test_token_reductions_without_a_budget_are_the_whole_caption_with_the_full_key():
    for reduce in ("token_span", "truncate"):
        cfg = MixConfig(strategy="recap", recap_reduce=reduce, recap_tokens=None)
        assert choose_caption("o", [WORDS], cfg, "k", 0).text == WORDS
        assert cfg.reduction() == {} and cfg.reduction_label() == "full"
        assert cfg.stage_key() == MixConfig(strategy="recap").stage_key()


def test_positive_zero_is_the_one_positive_choice_and_the_others_draw_their_own():
    one = MixConfig(strategy="mix", p=0.5, seed=4, recap_reduce="sub_caption")
    three = MixConfig(strategy="mix", p=0.5, seed=4, recap_reduce="sub_caption", positives=3)
    differ = 0
    for key in KEYS[:1000]:
        choices = choose_captions("o", [FIVE], three, key, 0)
        assert len(choices) == 3 and choices[0] == choose_caption("o", [FIVE], one, key, 0)
        differ += len({c.text for c in choices}) > 1
    assert differ > 700  # P(all three equal) = P(all three the same of 6 texts) < 1/4 here
    for j in (1, 2):  # each positive's coin alone is Bernoulli(p)
        hits = sum(choose_caption("o", ["r"], three, k, 0, j).emitted == "original" for k in KEYS)
        assert binomial_ok(hits, len(KEYS), 0.5)


def test_reduction_records_and_labels():
    assert MixConfig().reduction() == {} and MixConfig().reduction_label() == "full"
    assert MixConfig(recap_reduce="sub_caption").reduction() == {"recap_reduce": "sub_caption", "recap_sentences": 1}
    assert MixConfig(recap_reduce="sub_caption").reduction_label() == "recap sub_caption K=1"
    assert MixConfig(recap_reduce="token_span", recap_tokens=16).reduction_label() == "recap token_span K=16"
    assert MixConfig(positives=2).reduction_label() == "n=2 positives"
    both = MixConfig(original_reduce="truncate", original_tokens=8, recap_reduce="sub_caption", positives=2)
    assert both.reduction_label() == "recap sub_caption K=1, original truncate K=8, n=2 positives"


@dataclass
class MixConfigBeforeReductions:
    """MixConfig's fields before the reduction keys existed (commit f37e92c)."""

    strategy: str = "mix"
    p: float = 0.8
    seed: int = 0
    concat_separator: str = " "


@pytest.mark.parametrize(
    "fields",
    [{}, {"p": 0.5}, {"strategy": "concat", "concat_separator": " | "}, {"strategy": "recap", "seed": 3}],
)
def test_the_default_reduction_keeps_the_key_of_a_config_without_the_new_fields(fields):
    legacy = key_fields(MixConfigBeforeReductions(**fields))
    assert MixConfig(**fields).stage_key() == legacy
    assert content_hash(MixConfig(**fields).stage_key()) == content_hash(legacy)
    assert MixConfig(**fields, recap_reduce="sub_caption").stage_key() != legacy
    assert MixConfig(**fields, positives=2).stage_key() != legacy


def test_the_train_stage_key_of_a_default_mix_is_the_key_before_reductions():
    from pipeline.infos import DataInfo
    from pipeline.overrides import compose_config
    from pipeline.registry import RunContext
    from pipeline.stages.train import key

    def train_key(*overrides):
        cfg, _ = compose_config(list(overrides))
        return key(RunContext(cfg, {}, [], {"data": DataInfo(fingerprint="x")})), cfg

    for overrides in (["+experiment=clip_mix"], ["+experiment=clip_concat"], ["+experiment=flickr8k_lit_mix"]):
        now, cfg = train_key(*overrides)
        fields = {f: getattr(cfg.mix, f) for f in ("strategy", "p", "seed", "concat_separator")}
        assert now["mix"] == key_fields(MixConfigBeforeReductions(**fields))
    reduced, _ = train_key("+experiment=clip_mix", "mix.recap_reduce=token_span", "mix.recap_tokens=16")
    assert reduced["mix"]["recap_reduce"] == "token_span" and reduced["mix"]["recap_tokens"] == 16


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"recap_reduce": "halves"}, "mix.recap_reduce='halves' is unknown"),
        ({"original_reduce": "x"}, "mix.original_reduce='x' is unknown"),
        ({"recap_reduce": "token_span", "recap_tokens": 0}, "mix.recap_tokens=0 must be"),
        ({"recap_tokens": 8}, "mix.recap_tokens=8 is read only by mix.recap_reduce=token_span or truncate"),
        ({"original_sentences": 2}, "mix.original_sentences=2 is read only by mix.original_reduce=sub_caption"),
        ({"recap_reduce": "sub_caption", "recap_sentences": 0}, "mix.recap_sentences=0 must be"),
        ({"positives": 0}, "mix.positives=0 must be"),
    ],
)
def test_bad_reduction_values_are_one_line_errors_naming_the_key(fields, message):
    with pytest.raises(ConfigError) as caught:
        MixConfig(**fields)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_sentences_split_at_terminal_punctuation_and_line_breaks():
    assert sentences(FIVE) == ["One red cube.", "Two blue balls!", "A green star?", "A yellow cross.", "A black ring."]
    assert sentences("no full stop here") == ["no full stop here"]
    assert sentences("3.5 cm wide. Next") == ["3.5 cm wide.", "Next"]  # a decimal point is no sentence end
    assert reduce_text("", "recap", MixConfig(recap_reduce="sub_caption"), "k", 0) == ""
