"""The caption mixer: one training text per sample per epoch, p = probability of the ORIGINAL caption.

Each draw is a pure function of (seed, sample key, epoch, purpose) through a keyed BLAKE2b hash, so
the choice is identical whatever the number of loader workers, ranks or the sample order.
"""

from __future__ import annotations

import hashlib
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


def _pick_recap(recaptions: List[str], cfg: MixConfig, key: str, epoch: int) -> str:
    """One of several recaptions, uniformly, by its own draw."""
    if len(recaptions) == 1:
        return recaptions[0]
    index = int(uniform(cfg.seed, key, epoch, "which-recap") * len(recaptions))
    return recaptions[index]


def choose_caption(original: Optional[str], recaptions: List[str], cfg: MixConfig, key: str, epoch: int) -> Choice:
    """Pick the training text for one sample.

    mix: original if u < p else a recaption, u = uniform(seed, key, epoch); original / recap: that
    source; concat: original + separator + recaption. A missing source falls back to the other
    (``fallback`` = True). At least one of the two must be present.
    """
    if original is None and not recaptions:
        raise ValueError(f"sample {key!r} has neither an original caption nor a recaption")
    if cfg.strategy == "concat":
        if original is not None and recaptions:
            return Choice(
                original + cfg.concat_separator + _pick_recap(recaptions, cfg, key, epoch), None, "concat", False
            )
        return _fallback(original, recaptions, cfg, key, epoch, drawn=None)
    if cfg.strategy == "mix":
        p_original = cfg.p_original
        drawn = "original" if uniform(cfg.seed, key, epoch, "p") < p_original else "recap"
    else:
        drawn = cfg.strategy
    if drawn == "original" and original is not None:
        return Choice(original, drawn, "original", False)
    if drawn == "recap" and recaptions:
        return Choice(_pick_recap(recaptions, cfg, key, epoch), drawn, "recap", False)
    return _fallback(original, recaptions, cfg, key, epoch, drawn=drawn)


def _fallback(
    original: Optional[str], recaptions: List[str], cfg: MixConfig, key: str, epoch: int, drawn: Optional[str]
) -> Choice:
    """The source that exists, flagged as a fallback."""
    if original is not None:
        return Choice(original, drawn, "original", True)
    return Choice(_pick_recap(recaptions, cfg, key, epoch), drawn, "recap", True)
