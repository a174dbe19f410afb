"""Caption diagnostics per source on project shards."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import jpeg, random_image, tiny_clip, write_project_shards
from PIL import Image

from captiondata.records import Record
from evals.tasks.config import EvalConfig
from evals.tasks.diagnostics import caption_diagnostics, shard_diagnostics, summary


def test_summary_by_hand():
    assert summary([1, 2, 3, 10]) == {"mean": 4.0, "median": 2.5, "p95": pytest.approx(8.95), "max": 10.0}
    assert summary([])["mean"] is None


def records():
    return [
        Record("a", jpeg(random_image(0)), "Dog", ["A brown dog runs on the grass"], ["a dog", "A DOG running"]),
        Record("b", jpeg(random_image(1)), "cat cat", [], ["a cat"]),
    ]


def test_statistics_per_source(tmp_path):
    model, tokenizer, preprocess = tiny_clip()
    spec = write_project_shards(str(tmp_path), records())
    stats, per_pair = shard_diagnostics(
        spec, tokenizer, context_length=6, cfg=EvalConfig(batch_size=1), model=model, preprocess=preprocess
    )
    original, recap, refs = stats["original"], stats["recaption"], stats["references"]
    assert (original["samples"], original["samples_with_source"], original["n_captions"]) == (2, 2, 2)
    assert original["words"] == {"mean": 1.5, "median": 1.5, "p95": pytest.approx(1.95), "max": 2.0}
    assert original["vocabulary"] == 2 and original["fraction_truncated"] == 0.0
    assert recap["samples_with_source"] == 1 and recap["words"]["max"] == 7.0
    assert recap["tokens"]["max"] == 9.0 and recap["fraction_truncated"] == 1.0  # 7 words + start/end > 6
    assert refs["n_captions"] == 3 and refs["vocabulary"] == 4  # a, dog, running, cat (lower-cased)
    assert len(per_pair["references"].values) == 3
    # the cosine of pair (image a, "a dog") by hand
    with torch.no_grad():
        stored = Image.open(io.BytesIO(jpeg(random_image(0)))).convert("RGB")  # the shard holds the JPEG
        image = F.normalize(model.encode_image(preprocess(stored)[None]), dim=-1)
        text = F.normalize(model.encode_text(tokenizer(["a dog"])), dim=-1)
    assert per_pair["references"].values[0] == pytest.approx(float(image @ text.T), abs=1e-5)
    assert refs["mean_cosine"] == pytest.approx(per_pair["references"].values.mean())


def test_without_a_model_only_text_statistics():
    _, tokenizer, _ = tiny_clip()
    stats, per_pair = caption_diagnostics(records(), tokenizer, context_length=77)
    assert per_pair == {} and stats["original"]["mean_cosine"] is None and stats["references"]["n_captions"] == 3
