"""CLIP score of image-prompt pairs, and the agreement of a CLIP evaluator with people (Flickr8k-Expert, Kendall tau-c).

CLIP score (torchmetrics' ``CLIPScore`` definition, per pair): 100 x max(cos(E_image, E_prompt), 0); a set's score is
the mean over its pairs (torchmetrics clamps the mean instead of each pair; the two agree whenever no cosine is
negative). Prompts longer than the evaluator's context are truncated with the end-of-text token kept
(``evals.tasks.textstats.tokenize_with_truncation``, through ``embeddings.encode_texts``) and counted. The evaluator is
any ``ImageTextEmbedder``: an open_clip model (``load_open_clip``) or a CLIP this harness trained (its export folder:
the "Recap-CLIP score").

Validation against people (Hessel et al. 2021, CLIPScore, the Flickr8k-Expert protocol): every (image, candidate
caption) pair of ``ExpertAnnotations.txt`` gets CLIP-S = 2.5 x max(cos, 0) (the scale does not change a rank
correlation); each of the three expert ratings (1-4) is one judgment, so a pair enters three times; the agreement is
Kendall's tau-c between the metric and the judgments over all of them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from evals.tasks.config import EvalConfig
from harness_infra.errors import ConfigError

log = logging.getLogger(__name__)

EXPERT_FILE = "ExpertAnnotations.txt"
TOKEN_FILE = "Flickr8k.token.txt"


def clip_scores(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> np.ndarray:
    """Per-pair CLIP score 100 x max(cos, 0) of row-aligned N x D image and text embeddings (normalised here)."""
    if image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            f"{tuple(image_embeddings.shape)} image embeddings for {tuple(text_embeddings.shape)} text embeddings"
        )
    img = torch.nn.functional.normalize(image_embeddings.double(), dim=-1)
    txt = torch.nn.functional.normalize(text_embeddings.double(), dim=-1)
    return (100.0 * (img * txt).sum(dim=-1).clamp(min=0)).numpy()


def kendall_tau_c(x: Sequence[float], y: Sequence[float], block: int = 256) -> float:
    """Kendall's tau-c (Stuart's): 2 (C - D) / (n^2 (m - 1) / m), C/D = concordant/discordant pairs (ties in either
    variable count as neither), m = min(distinct x values, distinct y values).

    When one variable takes few values (human ratings 1-4): C - D = sum over value pairs u < v of that variable of
    sum_{i at u, j at v} sign(other_j - other_i), counted with sorted searches, O(n log n). Otherwise all pairs are
    compared in row blocks, O(n^2)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"tau-c needs two equal-length vectors, got {a.shape} and {b.shape}")
    n = a.size
    levels_a, levels_b = np.unique(a), np.unique(b)
    m = min(levels_a.size, levels_b.size)
    if n < 2 or m < 2:
        return float("nan")
    if min(levels_a.size, levels_b.size) <= 64:
        few, other, levels = (a, b, levels_a) if levels_a.size <= levels_b.size else (b, a, levels_b)
        groups = [np.sort(other[few == level]) for level in levels]
        difference = 0.0  # C - D over unordered pairs
        for low in range(len(groups)):
            for high in range(low + 1, len(groups)):
                lows, highs = groups[low], groups[high]
                below = np.searchsorted(lows, highs, side="left")  # lows strictly below each high value
                above = lows.size - np.searchsorted(lows, highs, side="right")
                difference += float((below - above).sum())
        return 2.0 * difference / (n * n * (m - 1) / m)
    balance = 0.0  # sum over ordered pairs i != j of sign(a_i - a_j) sign(b_i - b_j) = 2 (C - D)
    for start in range(0, n, block):
        da = np.sign(a[start : start + block, None] - a[None, :])
        db = np.sign(b[start : start + block, None] - b[None, :])
        balance += float((da * db).sum())
    return balance / (n * n * (m - 1) / m)


@dataclass
class ExpertJudgments:
    """Flickr8k-Expert: one row per (image, candidate caption) pair with its three expert ratings (1-4)."""

    images: List[str]
    captions: List[str]
    ratings: np.ndarray  # pairs x 3

    def flat(self, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(metric score per judgment, rating per judgment): each pair once per expert."""
        return np.repeat(np.asarray(scores, dtype=np.float64), self.ratings.shape[1]), self.ratings.reshape(-1).astype(
            np.float64
        )


def read_expert_judgments(root: str) -> ExpertJudgments:
    """``ExpertAnnotations.txt`` joined with the captions of ``Flickr8k.token.txt`` (candidate ids ``NAME.jpg#k``).
    Raises ConfigError for a missing file, a malformed row or a candidate id that has no caption."""
    paths = [os.path.join(root, EXPERT_FILE), os.path.join(root, TOKEN_FILE)]
    for path in paths:
        if not os.path.isfile(path):
            raise ConfigError(f"Flickr8k-Expert: {path} is missing (the Flickr8k release folder holds it)")
    captions: Dict[str, str] = {}
    with open(paths[1], encoding="utf-8") as handle:
        for line in handle:
            key, _, text = line.rstrip("\n").partition("\t")
            if text.strip():  # a blank caption (empty or whitespace only) is no caption
                captions[key] = text.strip()
    images, texts, ratings = [], [], []
    with open(paths[0], encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 5 or fields[1] not in captions:
                raise ConfigError(
                    f"{paths[0]}:{number}: expected 'image candidate#k r1 r2 r3' with a known candidate, got {line.strip()!r}"
                )
            images.append(fields[0])
            texts.append(captions[fields[1]])
            ratings.append([int(v) for v in fields[2:]])
    return ExpertJudgments(images, texts, np.asarray(ratings, dtype=np.int64))


def expert_agreement(
    embedder: Any, root: str, cfg: EvalConfig, model_id: Optional[str] = None, max_pairs: Optional[int] = None
) -> Dict[str, Any]:
    """Kendall tau-c (x 100, as the CLIPScore paper prints it) of the evaluator's CLIP-S with the Flickr8k-Expert
    judgments: {"tau_c", "pairs", "judgments", "truncated", "clip_s_mean"} (the mean CLIP-S over the pairs). Images
    are encoded once each (embedding cache when ``cfg.cache_dir`` is set); ``max_pairs`` keeps the first N pairs (a
    quick check)."""
    from evals.tasks.datasets import Decoding, FileImageSet, content_fingerprint
    from evals.tasks.embeddings import encode_images, encode_texts

    judgments = read_expert_judgments(root)
    count = len(judgments.images) if max_pairs is None else min(max_pairs, len(judgments.images))
    names = sorted(set(judgments.images[:count]))
    files = [os.path.join(root, "images", name) for name in names]
    data = FileImageSet("flickr8k-expert", files, list(range(len(files))), content_fingerprint(files, root, Decoding()))
    image_emb, _ = encode_images(embedder.model, embedder.preprocess, data, cfg, model_id)
    row = {name: i for i, name in enumerate(names)}
    texts = judgments.captions[:count]
    unique = sorted(set(texts))
    text_emb, truncated = encode_texts(embedder.model, embedder.tokenizer, unique, cfg, model_id)
    index = {t: i for i, t in enumerate(unique)}
    pairs_img = image_emb[[row[n] for n in judgments.images[:count]]]
    pairs_txt = text_emb[[index[t] for t in texts]]
    scores = 2.5 * clip_scores(pairs_img, pairs_txt) / 100.0
    sub = ExpertJudgments(judgments.images[:count], texts, judgments.ratings[:count])
    metric, human = sub.flat(scores)
    return {
        "tau_c": 100.0 * kendall_tau_c(metric, human),
        "pairs": count,
        "judgments": int(human.size),
        "truncated": int(truncated.sum()),
        "clip_s_mean": float(scores.mean()),
    }
