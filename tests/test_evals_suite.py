"""Configured tasks end to end on tiny data: records written once, undefined metrics explained, cache reused."""

from __future__ import annotations

import io
import os

import pytest
import torch
from eval_helpers import (
    caption_records,
    jpeg,
    random_image,
    tiny_clip,
    write_caption_folder,
    write_cb_classification,
    write_project_shards,
)
from PIL import Image

from evals.results.records import read_record
from evals.tasks.config import EvalConfig, task_config
from evals.tasks.registry import ImageTextEmbedder
from evals.tasks.suite import evaluate_checkpoint, model_info, run_task


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip(seed=0, context_length=32)


@pytest.fixture
def tasks(tmp_path):
    cls_root = write_cb_classification(
        str(tmp_path / "cls"), [0, 1, 2, 1, 0, 2], ["ant", "bee", "cow"], ["a photo of a {c}."]
    )
    shards = write_project_shards(str(tmp_path / "shards"), caption_records(6, references_per_image=2))
    long_root = write_caption_folder(
        str(tmp_path / "long"), [("a very long description " * 12) + str(i) for i in range(4)] + ["short one"]
    )
    return [
        task_config(name="cls3", task="zeroshot_classification", format="clip_benchmark_wds", path=cls_root),
        task_config(name="ret", task="retrieval", format="project_shards", path=shards),
        task_config(name="long", task="long_retrieval", format="caption_folder", path=long_root),
        task_config(name="diag", task="caption_diagnostics", format="project_shards", path=shards),
    ]


def hand_top1_hits(tiny, labels, classnames, template):
    """Top-1 hits by hand: each tar image (``random_image(i)`` as JPEG) through preprocess and encode_image, each class's
    one prompt through encode_text, both L2-normalised; a hit when the true class has the largest cosine."""
    model, tokenizer, preprocess = tiny
    with torch.no_grad():
        images = torch.stack(
            [preprocess(Image.open(io.BytesIO(jpeg(random_image(i)))).convert("RGB")) for i in range(len(labels))]
        )
        image_emb = torch.nn.functional.normalize(model.encode_image(images).double(), dim=-1)
        text_emb = torch.nn.functional.normalize(
            model.encode_text(tokenizer([template.format(c=c) for c in classnames])).double(), dim=-1
        )
    scores = image_emb @ text_emb.T
    return [float(int(scores[i].argmax()) == label) for i, label in enumerate(labels)]


def test_run_task_results(tiny, tasks, tmp_path):
    embedder = ImageTextEmbedder(*tiny)
    cfg = EvalConfig(cache_dir=str(tmp_path / "cache"), bootstrap_samples=100, tasks=tasks)
    cls = run_task(embedder, tasks[0], cfg)
    assert cls.n["classes"] == 3 and cls.metrics["top5"] is None
    assert cls.undefined["top5"] == "top-5 accuracy is undefined with 3 classes (< 5)"
    hits = cls.per_query["top1"].values
    expected = hand_top1_hits(tiny, [0, 1, 2, 1, 0, 2], ["ant", "bee", "cow"], "a photo of a {c}.")
    assert hits.tolist() == expected  # each image's hit, counted by hand from the model's own towers
    top1, n = sum(expected) / len(expected), len(expected)
    assert cls.metrics["top1"] == pytest.approx(top1)
    wald = (
        1.96 * (top1 * (1 - top1) / n) ** 0.5
    )  # the percentile bootstrap of a proportion is close to the Wald interval
    lo, hi = cls.intervals["top1"]
    assert lo == pytest.approx(max(top1 - wald, 0.0), abs=0.08) and hi == pytest.approx(min(top1 + wald, 1.0), abs=0.08)
    ret = run_task(embedder, tasks[1], cfg)
    assert ret.n == {"images": 6, "texts": 12, "image_queries": 6, "tied_t2i_queries": 0, "tied_i2t_queries": 0}
    assert (
        ret.metrics["t2i_R@5"] is not None
        and ret.metrics["t2i_R@10"] is None
        and "6 candidate images" in ret.undefined["t2i_R@10"]
    )
    assert ret.metrics["i2t_R@10"] is not None  # 12 candidate captions
    long = run_task(embedder, tasks[2], cfg)
    assert (
        long.task == "long_retrieval" and long.extra["context_length"] == 32 and long.extra["captions_truncated"] == 4
    )
    diag = run_task(embedder, tasks[3], cfg)
    assert diag.extra["sources"]["references"]["n_captions"] == 12 and "original_mean_cosine" in diag.metrics


def test_evaluate_checkpoint_writes_one_record_per_task(tiny, tasks, tmp_path):
    embedder = ImageTextEmbedder(*tiny)
    cfg = EvalConfig(
        cache_dir=str(tmp_path / "cache"), records_dir=str(tmp_path / "records"), bootstrap_samples=50, tasks=tasks[:3]
    )
    records = evaluate_checkpoint(embedder, cfg, "p0.8/step100")
    names = sorted(os.listdir(tmp_path / "records"))
    assert [n for n in names if n.endswith(".json")] == [
        "p0.8_step100__cls3.json",
        "p0.8_step100__long.json",
        "p0.8_step100__ret.json",
    ]
    stored = read_record(records[1]["path"])
    assert stored["model"]["weights_id"] == model_info(embedder, cfg)["weights_id"]
    assert stored["model"]["context_length"] == 32 and "Normalize" in stored["model"]["preprocess"]
    assert len(stored["dataset"]["fingerprint"]) == 64
    with pytest.raises(FileExistsError):
        evaluate_checkpoint(embedder, cfg, "p0.8/step100")
    again = evaluate_checkpoint(embedder, cfg, "p0.8/step100", on_exists="new_name")
    assert again[0]["path"].endswith("p0.8_step100__cls3-1.json")
    assert again[1]["metrics"] == records[1]["metrics"]  # served from the embedding cache


def test_a_task_for_another_kind_of_model_is_refused_before_running(tiny, tasks):
    from dataclasses import dataclass

    from harness_infra.errors import ConfigError

    @dataclass
    class Generator:
        kind: str = "image_generator"

    with pytest.raises(
        ConfigError,
        match="task=zeroshot_classification evaluates an image_text_embedder, but this model is an image_generator",
    ):
        evaluate_checkpoint(Generator(), EvalConfig(tasks=tasks), "gen")
