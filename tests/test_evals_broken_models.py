"""A broken model gets an error that names the model and the task, never a score; ties never help (issue 14, items 1-2)."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import caption_records, tiny_clip, write_cb_classification, write_project_shards

from evals.tasks.config import EvalConfig, task_config
from evals.tasks.registry import ImageTextEmbedder
from evals.tasks.suite import evaluate_checkpoint, run_task
from harness_infra.errors import BrokenModelError


@pytest.fixture
def tasks(tmp_path):
    cls_root = write_cb_classification(
        str(tmp_path / "cls"), [0, 1, 2, 3, 4, 5] * 2, ["ant", "bee", "cow", "dog", "eel", "fox"], ["a photo of a {c}."]
    )
    shards = write_project_shards(str(tmp_path / "shards"), caption_records(6, references_per_image=2))
    return [
        task_config(name="cls6", task="zeroshot_classification", format="clip_benchmark_wds", path=cls_root),
        task_config(name="ret", task="retrieval", format="project_shards", path=shards),
    ]


def nan_projection_clip():
    model, tokenizer, preprocess = tiny_clip(seed=0)
    with torch.no_grad():
        model.visual.proj.fill_(float("nan"))
    return ImageTextEmbedder(model, tokenizer, preprocess)


def test_nan_visual_projection_is_an_error_naming_model_and_task(tasks):
    cfg = EvalConfig(bootstrap_samples=0, tasks=tasks)
    with pytest.raises(
        BrokenModelError,
        match=r"model run-7/step3 \(\w+\), eval task cls6: 12 of 12 image embeddings of cls6 contain NaN",
    ):
        evaluate_checkpoint(nan_projection_clip(), cfg, "run-7/step3", write=False)
    with pytest.raises(BrokenModelError, match="image embeddings of ret contain NaN"):
        run_task(nan_projection_clip(), tasks[1], cfg)


def test_constant_embeddings_are_an_error_not_a_perfect_score(tasks):
    model, tokenizer, preprocess = tiny_clip(seed=0)
    with torch.no_grad():  # every image gets the same embedding: the projection of a zeroed trunk output + a constant
        model.visual.proj.zero_()
        model.visual.proj[0, :] = 1.0
        for p in model.visual.transformer.parameters():
            p.zero_()
        model.visual.ln_post.weight.zero_()
        model.visual.ln_post.bias.fill_(1.0)
    embedder = ImageTextEmbedder(model, tokenizer, preprocess)
    with pytest.raises(BrokenModelError, match="all 12 image embeddings of cls6 are identical"):
        run_task(embedder, tasks[0], EvalConfig(bootstrap_samples=0))
    with pytest.raises(BrokenModelError, match="all 6 image embeddings of ret are identical"):
        run_task(embedder, tasks[1], EvalConfig(bootstrap_samples=0))


def test_six_classes_named_missile_score_chance_with_ties_counted(tmp_path, caplog, monkeypatch):
    from evals.tasks import prompts

    monkeypatch.setattr(prompts, "_WARNED", set())  # the warning is once per list per process: not only in a fresh one
    # CLIP_benchmark gives 0.167 on this toy set (torch.topk on identical logits); the old rule gave 0.533
    root = write_cb_classification(
        str(tmp_path / "missile"), [0, 1, 2, 3, 4, 5] * 5, ["missile"] * 6, ["a photo of a {c}."]
    )
    embedder = ImageTextEmbedder(*tiny_clip(seed=0))
    task = task_config(name="missile6", task="zeroshot_classification", format="clip_benchmark_wds", path=root)
    with caplog.at_level("WARNING"):
        result = run_task(embedder, task, EvalConfig(bootstrap_samples=0))
    assert result.metrics["top1"] == pytest.approx(1 / 6)
    assert result.metrics["top5"] == pytest.approx(5 / 6)
    assert result.metrics["mean_per_class_recall"] == pytest.approx(1 / 6)
    assert result.n["tied_queries"] == 30
    assert result.extra["duplicate_classnames"] == ["missile"]
    assert "class names occur more than once ('missile' at [0, 1, 2, 3, 4, 5])" in caplog.text


def test_identical_images_in_a_retrieval_set_are_counted_ties(tmp_path):
    from eval_helpers import jpeg, random_image

    from captiondata.records import Record

    same = jpeg(random_image(0))
    records = [
        Record(
            key=f"k{i}",
            image=same if i < 2 else jpeg(random_image(i)),
            original=f"caption {i}",
            recaptions=[],
            references=[f"caption {i}"],
        )
        for i in range(5)
    ]
    shards = write_project_shards(str(tmp_path / "dup"), records)
    result = run_task(
        ImageTextEmbedder(*tiny_clip(seed=1)),
        task_config(name="dup", task="retrieval", format="project_shards", path=shards),
        EvalConfig(bootstrap_samples=0, batch_size=8),
    )
    # captions 0 and 1 each tie between the two identical images: each query's R@1 can be at most 1/2
    per_query = result.per_query["t2i_R@1"].values
    assert result.n["tied_t2i_queries"] == 2
    # exactly 1/2 when no other image scores above the pair, else 0; never the favour of the tie (1)
    assert set(per_query[:2].tolist()) <= {0.0, 0.5}
    assert result.per_query["t2i_R@5"].values[:2].tolist() == [1.0, 1.0]
