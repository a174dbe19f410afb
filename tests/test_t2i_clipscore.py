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
    assert clip_scores(torch.from_numpy(img), torch.from_numpy(pos)).mean() == pytest.approx(
        max(100 * np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(img, pos)]), 0)
    )


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
    lengths = np.array(
        [len(c.split()) for c in judgments.captions], dtype=float
    )  # a weak but real metric: caption length
    metric, human = judgments.flat(lengths)
    assert metric.size == human.size == 3 * 5822
    assert kendall_tau_c(metric, human) == pytest.approx(
        scipy.stats.kendalltau(metric, human, variant="c").statistic, abs=1e-12
    )


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
    embedder = tiny_open_clip()
    out = expert_agreement(embedder, root, EvalConfig(cache_dir=str(tmp_path)), max_pairs=60)
    assert out["pairs"] == 60 and out["judgments"] == 180
    assert out["tau_c"] == pytest.approx(hand_tau_c(embedder, root, 60), abs=1e-6)


def hand_tau_c(embedder, root: str, pairs: int) -> float:
    """100 x scipy's tau-c of CLIP-S (2.5 max(cos, 0), each pair encoded on its own) against the three ratings per pair,
    the first ``pairs`` rows of ExpertAnnotations.txt read here with the captions of Flickr8k.token.txt."""
    scores, ratings = hand_clip_s(embedder, root, pairs)
    return 100.0 * scipy.stats.kendalltau(scores, ratings, variant="c").statistic


def hand_clip_s(embedder, root: str, pairs: int):
    """(CLIP-S per judgment, rating per judgment) of the first ``pairs`` rows, computed here (see ``hand_tau_c``)."""
    from PIL import Image

    with open(os.path.join(root, "Flickr8k.token.txt"), encoding="utf-8") as handle:
        captions = dict(line.rstrip("\n").split("\t", 1) for line in handle if "\t" in line)
    with open(os.path.join(root, "ExpertAnnotations.txt"), encoding="utf-8") as handle:
        rows = [line.split("\t") for line in handle if line.strip()][:pairs]
    scores, ratings = [], []
    with torch.no_grad():
        for image, candidate, *votes in rows:
            pixels = embedder.preprocess(Image.open(os.path.join(root, "images", image)).convert("RGB"))[None]
            img = torch.nn.functional.normalize(embedder.model.encode_image(pixels).double(), dim=-1)
            txt = torch.nn.functional.normalize(
                embedder.model.encode_text(embedder.tokenizer([captions[candidate].strip()])).double(), dim=-1
            )
            for vote in votes:
                scores.append(2.5 * max(float((img * txt).sum()), 0.0))
                ratings.append(int(vote))
    return scores, ratings


def test_expert_agreement_against_scipy_on_a_hand_made_expert_folder(tmp_path):
    """The protocol on a written Flickr8k-Expert folder (5 images, 8 judged pairs): tau-c = scipy's on CLIP-S by hand."""
    from test_t2i_tasks import tiny_open_clip

    write_expert_folder(tmp_path)
    embedder = tiny_open_clip()
    out = expert_agreement(embedder, str(tmp_path), EvalConfig())
    assert (out["pairs"], out["judgments"]) == (8, 24)
    assert out["tau_c"] == pytest.approx(hand_tau_c(embedder, str(tmp_path), 8), abs=1e-6)
    scores, _ = hand_clip_s(embedder, str(tmp_path), 8)  # CLIP-S = 2.5 max(cos, 0), in [0, 2.5]
    assert out["clip_s_mean"] == pytest.approx(np.mean(scores), abs=1e-5) and 0 < out["clip_s_mean"] < 2.5


def write_expert_folder(root, first_image: int = 0) -> None:
    """A Flickr8k-Expert folder of 5 random images (``random_image(first_image + i)``) and 8 judged pairs."""
    from eval_helpers import random_image

    (root / "images").mkdir()
    for i in range(5):
        random_image(first_image + i).save(root / "images" / f"im{i}.jpg", quality=95)
    words = ["a red square", "two blue circles", "a dog runs", "noise on a wall", "grey sky"]
    (root / "Flickr8k.token.txt").write_text("".join(f"im{i}.jpg#0\t{w} .\n" for i, w in enumerate(words)))
    rows = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 3), (4, 4), (4, 0)]
    votes = [(4, 3, 4), (1, 2, 1), (3, 3, 2), (2, 1, 1), (1, 1, 2), (4, 4, 3), (3, 2, 4), (1, 1, 1)]
    (root / "ExpertAnnotations.txt").write_text(
        "".join(f"im{a}.jpg\tim{b}.jpg#0\t{r[0]}\t{r[1]}\t{r[2]}\n" for (a, b), r in zip(rows, votes))
    )


def test_two_expert_folders_sharing_an_embedding_cache_are_scored_on_their_own_images(tmp_path):
    """Same file names, other pixels: the image cache is keyed by the folder's content, so the second folder's
    CLIP-S is its own (by hand), not the first folder's."""
    from test_t2i_tasks import tiny_open_clip

    embedder, cfg = tiny_open_clip(), EvalConfig(cache_dir=str(tmp_path / "cache"))
    for name, first_image in (("a", 0), ("b", 10)):
        (tmp_path / name).mkdir()
        write_expert_folder(tmp_path / name, first_image)
    outs = [expert_agreement(embedder, str(tmp_path / name), cfg) for name in ("a", "b")]
    by_hand = [np.mean(hand_clip_s(embedder, str(tmp_path / name), 8)[0]) for name in ("a", "b")]
    assert [o["clip_s_mean"] for o in outs] == pytest.approx(by_hand, abs=1e-5) and by_hand[0] != by_hand[1]
    assert outs[1]["tau_c"] == pytest.approx(hand_tau_c(embedder, str(tmp_path / "b"), 8), abs=1e-6)


def test_clip_scores_of_misaligned_embeddings_is_a_value_error_naming_both_shapes():
    with pytest.raises(ValueError, match=r"^\(3, 4\) image embeddings for \(2, 4\) text embeddings$"):
        clip_scores(torch.zeros(3, 4), torch.zeros(2, 4))


def test_the_expert_reader_keeps_a_caption_ending_in_x_and_treats_a_blank_caption_as_missing(tmp_path):
    (tmp_path / "Flickr8k.token.txt").write_text(
        "a.jpg#0\tA sign reading TAX\nb.jpg#0\t\nc.jpg#0\t   \n", encoding="utf-8"
    )
    (tmp_path / "ExpertAnnotations.txt").write_text("a.jpg a.jpg#0 4 4 3\n", encoding="utf-8")
    assert read_expert_judgments(str(tmp_path)).captions == ["A sign reading TAX"]
    for blank in ("b", "c"):  # an empty and a whitespace-only caption: neither is a known candidate
        (tmp_path / "ExpertAnnotations.txt").write_text(f"{blank}.jpg {blank}.jpg#0 1 1 1\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=r"ExpertAnnotations.txt:1: expected .* with a known candidate"):
            read_expert_judgments(str(tmp_path))


def test_tau_c_is_defined_from_two_judgments_and_two_levels():
    assert kendall_tau_c([1, 2], [1, 2]) == pytest.approx(1.0)  # n = 2, m = 2: 2 (C - D) / (n^2 (m - 1) / m) = 2 / 2
    assert kendall_tau_c([1, 2], [2, 1]) == pytest.approx(-1.0)
    x, y = [1.0, 2.0, 3.0, 4.0], [1, 1, 2, 2]  # two rating levels
    assert kendall_tau_c(x, y) == pytest.approx(scipy.stats.kendalltau(x, y, variant="c").statistic)
    assert np.isnan(kendall_tau_c([1.0], [2.0])) and np.isnan(kendall_tau_c([1.0, 2.0], [3, 3]))  # one pair / one level
    with pytest.raises(ValueError, match=r"tau-c needs two equal-length vectors, got \(2,\) and \(3,\)"):
        kendall_tau_c([1, 2], [1, 2, 3])


def test_the_expert_reader_keeps_reading_past_blank_lines(tmp_path):
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog runs.\nb.jpg#1\tA cat\tsleeps.\n", encoding="utf-8")
    (tmp_path / "ExpertAnnotations.txt").write_text("a.jpg a.jpg#0 4 4 3\n\nb.jpg b.jpg#1 1 2 1\n", encoding="utf-8")
    judgments = read_expert_judgments(str(tmp_path))
    assert judgments.images == ["a.jpg", "b.jpg"] and judgments.captions == ["A dog runs.", "A cat\tsleeps."]
    assert judgments.ratings.tolist() == [[4, 4, 3], [1, 2, 1]] and judgments.ratings.dtype == np.int64
    scores, ratings = judgments.flat(np.array([0.5, 0.25]))
    assert scores.tolist() == [0.5, 0.5, 0.5, 0.25, 0.25, 0.25] and ratings.tolist() == [4, 4, 3, 1, 2, 1]
    (tmp_path / "ExpertAnnotations.txt").unlink()
    with pytest.raises(ConfigError, match=r"Flickr8k-Expert: .*ExpertAnnotations.txt is missing"):
        read_expert_judgments(str(tmp_path))
