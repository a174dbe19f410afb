"""CLIP_benchmark's own CLI reads what the harness writes, and gets the harness's numbers (to 1e-6).

The harness builds the scenes data set (its zero-shot split is a CLIP_benchmark wds folder) and exports a micro CLIP
in open_clip's hub layout; ``clip_benchmark eval --model local-dir:EXPORT --dataset wds/... --dataset_root ...`` runs
as a subprocess (through ``tests/clip_benchmark_cli.py``: the numpy >= 2.3 fix of its accuracy()) with --no_amp
(CPU autocast would be bfloat16), and its JSON metrics are compared with ``evaluate_zeroshot_classification`` /
``evaluate_retrieval`` on the harness's own reader and loader of the same files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import require_module  # noqa: E402

require_module("clip_benchmark", "pip install -e '.[dev]'")

from eval_helpers import write_cb_retrieval  # noqa: E402

from captiondata.build import build_shards  # noqa: E402
from captiondata.config import DataConfig  # noqa: E402
from evals.tasks.config import EvalConfig  # noqa: E402
from evals.tasks.datasets import clip_benchmark_wds  # noqa: E402
from evals.tasks.retrieval import evaluate_retrieval  # noqa: E402
from evals.tasks.zeroshot import evaluate_zeroshot_classification  # noqa: E402
from train_clip.config import ClipModelConfig  # noqa: E402
from train_clip.models import create_clip, export_model, load_for_eval, register_inline  # noqa: E402

TOL = 1e-6
CFG = EvalConfig(cache_dir=None, bootstrap_samples=0, batch_size=64)
CLI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_benchmark_cli.py")
MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A random micro CLIP exported by the harness (open_clip hub layout)."""
    folder = tmp_path_factory.mktemp("clip")
    cfg = ClipModelConfig(name="TestCLIP-cbcli", inline=MICRO)
    register_inline(cfg, str(folder))
    export_dir = str(folder / "export")
    export_model(
        create_clip(cfg, 32, torch.device("cpu"), seed=1), cfg, 32, export_dir
    )  # seed 1: not a one-class predictor
    return export_dir


def run_cli(export_dir, dataset_root, task, out, *extra):
    """``clip_benchmark eval`` in a subprocess; returns its metrics dict."""
    command = [
        sys.executable,
        CLI,
        "eval",
        "--model",
        f"local-dir:{export_dir}",
        "--pretrained",
        "none",
        "--dataset",
        "wds/harness",
        "--dataset_root",
        dataset_root,
        "--task",
        task,
        "--no_amp",
        "--batch_size",
        "64",
        "--num_workers",
        "0",
        "--output",
        str(out),
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out, encoding="utf-8") as handle:
        metrics = json.load(handle)["metrics"]
    print(" ".join(command), "->", metrics)  # shown with pytest -s
    return metrics


def test_cli_zeroshot_on_the_harness_zeroshot_split(export, tmp_path):
    shard_dir = tmp_path / "shards"
    build_shards(
        DataConfig(
            name="scenes",
            builder="scenes",
            shard_dir=str(shard_dir),
            build_size=8,
            samples_per_shard=400,
            scene_image_size=32,
        )
    )
    root = str(shard_dir / "zeroshot")
    assert sorted(os.listdir(os.path.join(root, "test"))) == [
        "0.tar",
        "1.tar",
        "2.tar",
        "nshards.txt",
        "zeroshot-manifest.json",
    ]
    ref = run_cli(export, root, "zeroshot_classification", tmp_path / "cls.json")
    model, tokenizer, preprocess = load_for_eval(export)
    ours = evaluate_zeroshot_classification(model, tokenizer, preprocess, clip_benchmark_wds(root, "test"), CFG)
    assert ours.n["images"] == 1080
    print("harness:", ours.metrics)
    for name, theirs in (("top1", "acc1"), ("top5", "acc5"), ("mean_per_class_recall", "mean_per_class_recall")):
        assert abs(ours.metrics[name] - ref[theirs]) < TOL, (name, ours.metrics[name], ref[theirs])


def test_cli_retrieval_on_a_wds_retrieval_set(export, tmp_path):
    captions = [
        [f"a {c} shape number {i}" + " in a scene" * (j % 2) for j in range(1 + i % 3)]
        for i, c in enumerate(["red", "blue", "green", "round", "square"] * 8)
    ]
    root = write_cb_retrieval(str(tmp_path / "ret"), captions)
    ref = run_cli(export, root, "zeroshot_retrieval", tmp_path / "ret.json", "--recall_k", "1", "5", "10")
    model, tokenizer, preprocess = load_for_eval(export)
    ours = evaluate_retrieval(model, tokenizer, preprocess, clip_benchmark_wds(root, "test", kind="retrieval"), CFG)
    print("harness:", ours.metrics)
    for k in (1, 5, 10):
        assert abs(ours.metrics[f"t2i_R@{k}"] - ref[f"image_retrieval_recall@{k}"]) < TOL, k
        assert abs(ours.metrics[f"i2t_R@{k}"] - ref[f"text_retrieval_recall@{k}"]) < TOL, k
