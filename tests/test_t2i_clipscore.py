"""evals.tasks.clipscore: the CLIP-score formula, Kendall tau-c against scipy (toy tables and the real Flickr8k-Expert
file), the Flickr8k-Expert reader and the agreement of an evaluator with people."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.stats
import torch

from conftest import require_real
from evals.tasks.clipscore import clip_scores, expert_agreement, kendall_tau_c, read_expert_judgments
from evals.tasks.config import EvalConfig
from harness_infra.errors import ConfigError


def test_clip_score_is_100_times_the_clamped_cosine():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    cos = np.array([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(img, txt)])
    got = clip_scores(torch.from_numpy(img) * 3.0, torch.from_numpy(txt))  # any scale: cosine
    assert got == pytest.approx(100 * np.maximum(cos, 0), abs=1e-9) and (got == 0).sum() == (cos < 0).sum() > 0
    # where every cosine is positive the mean equals torchmetrics' CLIPScore.compute (clamp of the mean)
    pos = np.abs(txt) * np.sign(img)
    assert clip_scores(torch.from_numpy(img), torch.from_numpy(pos)).mean() == pytest.approx(max(100 * np.mean(
        [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(img, pos)]), 0))


@pytest.mark.parametrize("kind", ["continuous", "ties", "few_levels"])
def test_tau_c_equals_scipy_on_toy_tables(kind):
    rng = np.random.default_rng(1)
    x = rng.normal(size=400) if kind == "continuous" else rng.integers(0, 200, 400).astype(float)
    y = x + rng.normal(size=400) * 20 if kind != "few_levels" else rng.integers(1, 5, 400) + (x > 100)
    assert kendall_tau_c(x, y) == pytest.approx(scipy.stats.kendalltau(x, y, variant="c").statistic, abs=1e-12)


def test_tau_c_equals_scipy_on_the_real_flickr8k_expert_file(data_root):
    root = os.path.join(data_root, "flickr8k")
    require_real(root)
    judgments = read_expert_judgments(root)
    assert judgments.ratings.shape == (5822, 3) and judgments.ratings.min() == 1 and judgments.ratings.max() == 4
    lengths = np.array([len(c.split()) for c in judgments.captions], dtype=float)  # a weak but real metric: caption length
    metric, human = judgments.flat(lengths)
    assert metric.size == human.size == 3 * 5822
    assert kendall_tau_c(metric, human) == pytest.approx(scipy.stats.kendalltau(metric, human, variant="c").statistic, abs=1e-12)


def test_expert_reader_rejects_a_malformed_row(tmp_path):
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog runs .\n")
    (tmp_path / "ExpertAnnotations.txt").write_text("a.jpg\ta.jpg#0\t1\t2\t3\nb.jpg\tb.jpg#4\t1\t1\t1\n")
    with pytest.raises(ConfigError, match="ExpertAnnotations.txt:2"):
        read_expert_judgments(str(tmp_path))


def test_expert_agreement_of_a_tiny_random_clip_on_real_judgments(data_root, tmp_path):
    """The protocol end to end on the first 60 real pairs: a random CLIP agrees with nobody (|tau-c| small)."""
    from test_t2i_tasks import tiny_open_clip

    root = os.path.join(data_root, "flickr8k")
    require_real(root)
    out = expert_agreement(tiny_open_clip(), root, EvalConfig(cache_dir=str(tmp_path)), max_pairs=60)
    assert out["pairs"] == 60 and out["judgments"] == 180 and abs(out["tau_c"]) < 30
