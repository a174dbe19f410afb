"""The caption mixer: one training text per sample per epoch, p = probability of the ORIGINAL caption.

Each draw is a pure function of (seed, sample key, epoch, purpose) through a keyed BLAKE2b hash, so
the choice is identical whatever the number of loader workers, ranks or the sample order. Purposes: ``p`` (the
coin), ``which-recap`` (the recaption index), ``sub_caption-recap`` / ``token_span-recap`` (and ``-original``: where
a source's reduction starts); positive j > 0 of ``mix.positives`` appends ``#j`` to each (positive 0 is the single
text of a one-positive run, drawn exactly as before the reductions existed).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import List, Optional

from captiondata.config import MixConfig


def uniform(seed: int, key: str, epoch: int, purpose: str) -> float:
    """A uniform number in [0, 1) determined by (seed, key, epoch, purpose)."""
    message = f"{seed}\x1f{epoch}\x1f{purpose}\x1f{key}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(message, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class Choice:
    """The text a sample trains on; ``drawn`` is the mixer's coin (original/recap/None) before fallback,
    ``emitted`` what the text is (original/recap/concat), ``fallback`` True if the drawn source was missing."""

    text: str
    drawn: Optional[str]
    emitted: str
    fallback: bool


SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")  # after . ! or ? and whitespace, or at a line break


def sentences(text: str) -> List[str]:
    """The sentences of a caption: pieces ending in . ! or ? before whitespace, or lines; empty pieces dropped."""
    return [piece for piece in SENTENCE_END.split(text.strip()) if piece]


def _start(seed: int, key: str, epoch: int, purpose: str, windows: int) -> int:
    """A start index uniform over ``windows`` positions (by the draw of ``purpose``)."""
    return min(int(uniform(seed, key, epoch, purpose) * windows), windows - 1)


def reduce_text(text: str, source: str, cfg: MixConfig, key: str, epoch: int, suffix: str = "") -> str:
    """The part of one source's text (``source`` = recap or original) the text encoder sees (``cfg.{source}_reduce``).

    After CLIPS (Liu et al. 2024, arXiv 2411.16828, which feeds only part of each synthetic caption to the text
    encoder and compares truncation, block masking and its "sub-caption" masking):

    - ``full``: the whole text;
    - ``sub_caption``: K = ``{source}_sentences`` consecutive sentences (``sentences``), the first of them uniform over
      the S - K + 1 possible starts by the draw ``sub_caption-{source}`` (CLIPS's sub-caption);
    - ``token_span``: K = ``{source}_tokens`` consecutive whitespace words, the first uniform over the W - K + 1
      starts by the draw ``token_span-{source}`` (a random span, CLIPS's block masking);
    - ``truncate``: the first K words (CLIPS's truncation).

    A text with at most K sentences (sub_caption) or words is kept whole, unchanged. Words are joined by one space.
    ``suffix`` (``#j`` for positive j > 0) makes each positive's draw its own.
    """
    reduce, k = cfg.reduce_of(source)
    if reduce == "full":
        return text
    if reduce == "sub_caption":
        pieces = sentences(text)
        if len(pieces) <= k:
            return text
        start = _start(cfg.seed, key, epoch, f"sub_caption-{source}{suffix}", len(pieces) - k + 1)
        return " ".join(pieces[start : start + k])
    words = text.split()
    if len(words) <= k:
        return text
    if reduce == "truncate":
        return " ".join(words[:k])
    start = _start(cfg.seed, key, epoch, f"token_span-{source}{suffix}", len(words) - k + 1)
    return " ".join(words[start : start + k])


def _pick_recap(recaptions: List[str], cfg: MixConfig, key: str, epoch: int, suffix: str = "") -> str:
    """One of several recaptions, uniformly, by its own draw, reduced (``reduce_text``)."""
    if len(recaptions) == 1:
        chosen = recaptions[0]
    else:
        chosen = recaptions[int(uniform(cfg.seed, key, epoch, "which-recap" + suffix) * len(recaptions))]
    return reduce_text(chosen, "recap", cfg, key, epoch, suffix)


def choose_caption(
    original: Optional[str], recaptions: List[str], cfg: MixConfig, key: str, epoch: int, positive: int = 0
) -> Choice:
    """Pick the training text for one sample (``positive``: which of the ``mix.positives`` texts of the sample).

    mix: original if u < p else a recaption, u = uniform(seed, key, epoch); original / recap: that
    source; concat: original + separator + recaption. A missing source falls back to the other
    (``fallback`` = True). At least one of the two must be present. Each source's text is then reduced as
    ``mix.{source}_reduce`` says (``reduce_text``; under concat each part). Positive 0 draws with the purposes
    ``p`` and ``which-recap`` as a one-positive run does; positive j > 0 with ``p#j``, ``which-recap#j`` ...
    """
    if original is None and not recaptions:
        raise ValueError(f"sample {key!r} has neither an original caption nor a recaption")
    suffix = f"#{positive}" if positive else ""
    if cfg.strategy == "concat":
        if original is not None and recaptions:
            text = (
                reduce_text(original, "original", cfg, key, epoch, suffix)
                + cfg.concat_separator
                + _pick_recap(recaptions, cfg, key, epoch, suffix)
            )
            return Choice(text, None, "concat", False)
        return _fallback(original, recaptions, cfg, key, epoch, None, suffix)
    if cfg.strategy == "mix":
        p_original = cfg.p_original
        drawn = "original" if uniform(cfg.seed, key, epoch, "p" + suffix) < p_original else "recap"
    else:
        drawn = cfg.strategy
    if drawn == "original" and original is not None:
        return Choice(reduce_text(original, "original", cfg, key, epoch, suffix), drawn, "original", False)
    if drawn == "recap" and recaptions:
        return Choice(_pick_recap(recaptions, cfg, key, epoch, suffix), drawn, "recap", False)
    return _fallback(original, recaptions, cfg, key, epoch, drawn, suffix)


def choose_captions(
    original: Optional[str], recaptions: List[str], cfg: MixConfig, key: str, epoch: int
) -> List[Choice]:
    """The ``mix.positives`` texts of one sample: ``choose_caption`` for positive 0, 1, ..., n - 1 (independent draws;
    with one positive, the one-positive choice)."""
    return [choose_caption(original, recaptions, cfg, key, epoch, j) for j in range(cfg.positives)]


def _fallback(
    original: Optional[str],
    recaptions: List[str],
    cfg: MixConfig,
    key: str,
    epoch: int,
    drawn: Optional[str],
    suffix: str = "",
) -> Choice:
    """The source that exists (reduced as its own source), flagged as a fallback."""
    if original is not None:
        return Choice(reduce_text(original, "original", cfg, key, epoch, suffix), drawn, "original", True)
    return Choice(_pick_recap(recaptions, cfg, key, epoch, suffix), drawn, "recap", True)
