"""Encoding: batched preprocessing is bit-identical, trimmed text encoding is exact, the cache is used."""

from __future__ import annotations

import os

import open_clip
import pytest
import torch
import torch.nn.functional as F
from eval_helpers import random_image, tiny_clip, write_image_folder

from evals.tasks.config import EvalConfig
from evals.tasks.datasets import image_folder
from evals.tasks.embeddings import encode_images, encode_texts, text_context_length
from evals.tasks.imageprep import SplitPreprocess
from evals.tasks.textstats import token_counts, tokenize_with_truncation
from harness_infra.errors import ConfigError
from towers.text_trim import can_trim_text, encode_text_trimmed, token_lengths

TEXTS = ["a dog", "two cats on a sofa in the sun", "", "a very " + "long " * 40 + "caption", "A photo of a {c}."]


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip(seed=0, context_length=32)


@pytest.mark.parametrize("size", [32, 45, 64])
def test_split_preprocess_is_bit_identical(size):
    preprocess = open_clip.image_transform(size, is_train=False)
    split = SplitPreprocess(preprocess)
    images = [random_image(i, 40 + 7 * i, mode="RGB" if i % 3 else "L") for i in range(6)]
    batched = split.tensor_stage([split.pil_stage(im) for im in images])
    reference = torch.stack([preprocess(im) for im in images])
    assert torch.equal(batched, reference)


def test_split_preprocess_falls_back_for_other_pipelines():
    from torchvision import transforms as T

    preprocess = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])  # no Normalize: not split
    split = SplitPreprocess(preprocess)
    images = [random_image(i) for i in range(3)]
    assert torch.equal(
        split.tensor_stage([split.pil_stage(im) for im in images]), torch.stack([preprocess(im) for im in images])
    )


def test_trimmed_text_encoding_matches_full_context(tiny):
    model, tokenizer, _ = tiny
    assert can_trim_text(model)
    tokens = tokenizer(TEXTS, context_length=32)
    with torch.no_grad():
        full = model.encode_text(tokens)
        trimmed = encode_text_trimmed(model, tokens)
    assert torch.allclose(full, trimmed, atol=1e-5, rtol=1e-5)
    assert int(token_lengths(tokens).max()) == 32  # the long caption fills the context


def test_encode_texts_matches_model_in_input_order(tiny):
    model, tokenizer, _ = tiny
    cfg = EvalConfig(cache_dir=None, batch_size=2)
    texts = TEXTS * 3
    embeddings, truncated = encode_texts(model, tokenizer, texts, cfg)
    with torch.no_grad():
        reference = F.normalize(model.encode_text(tokenizer(texts, context_length=32)), dim=-1)
    assert torch.allclose(embeddings, reference, atol=1e-5)
    assert truncated.tolist() == [False, False, False, True, False] * 3


def test_tokenize_with_truncation_equals_the_tokenizer(tiny):
    _, tokenizer, _ = tiny
    for context in (5, 9, 32):
        tokens, truncated = tokenize_with_truncation(tokenizer, TEXTS, context)
        assert torch.equal(tokens, tokenizer(TEXTS, context_length=context))
        assert truncated.tolist() == (token_counts(tokenizer, TEXTS) > context).tolist()


def test_context_length_override(tiny):
    model, tokenizer, _ = tiny
    assert text_context_length(model, tokenizer, EvalConfig()) == 32
    assert text_context_length(model, tokenizer, EvalConfig(context_length=16)) == 16
    with pytest.raises(ConfigError, match="exceeds the model's context length 32"):
        text_context_length(model, tokenizer, EvalConfig(context_length=64))


def test_image_cache_makes_rerun_skip_the_model(tiny, tmp_path, monkeypatch):
    model, _, preprocess = tiny
    data = image_folder(write_image_folder(str(tmp_path / "folder"), ["a", "b"], 3), "test")
    cfg = EvalConfig(cache_dir=str(tmp_path / "cache"), batch_size=4)
    first, targets = encode_images(model, preprocess, data, cfg, model_id="m")
    files = os.listdir(tmp_path / "cache")
    assert len(files) == 1 and files[0].startswith("image-") and not any(f.startswith(".tmp") for f in files)
    monkeypatch.setattr(model, "encode_image", lambda *_: pytest.fail("cache miss: the model ran again"))
    second, targets2 = encode_images(model, preprocess, data, cfg, model_id="m")
    assert torch.equal(first, second) and targets == targets2 == [0, 0, 0, 1, 1, 1]
    loaded = torch.load(tmp_path / "cache" / files[0], weights_only=True)
    assert torch.equal(loaded["embeddings"], first)


def test_cache_key_depends_on_weights_and_preprocessing(tiny, tmp_path):
    model, _, preprocess = tiny
    data = image_folder(write_image_folder(str(tmp_path / "folder"), ["a"], 2), "test")
    cfg = EvalConfig(cache_dir=str(tmp_path / "cache"))
    encode_images(model, preprocess, data, cfg)
    encode_images(model, open_clip.image_transform(32, is_train=False, interpolation="bilinear"), data, cfg)
    other, _, _ = tiny_clip(seed=1)
    encode_images(other, preprocess, data, cfg)
    assert len(os.listdir(tmp_path / "cache")) == 3


def test_text_cache_hit_returns_truncation(tiny, tmp_path, monkeypatch):
    model, tokenizer, _ = tiny
    cfg = EvalConfig(cache_dir=str(tmp_path / "cache"))
    first = encode_texts(model, tokenizer, TEXTS, cfg, model_id="m")
    monkeypatch.setattr(model, "encode_text", lambda *_: pytest.fail("cache miss"))
    monkeypatch.setattr("evals.tasks.embeddings.encode_text_trimmed", lambda *_: pytest.fail("cache miss"))
    second = encode_texts(model, tokenizer, TEXTS, cfg, model_id="m")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_loader_workers_split_shards_without_loss(tiny, tmp_path):
    from eval_helpers import caption_records, write_project_shards

    from evals.tasks.datasets import project_shards

    model, _, preprocess = tiny
    data = project_shards(write_project_shards(str(tmp_path), caption_records(9, 1), per_shard=2), name="p")
    serial, targets = encode_images(model, preprocess, data, EvalConfig(cache_dir=None, batch_size=4, num_workers=0))
    parallel, targets2 = encode_images(model, preprocess, data, EvalConfig(cache_dir=None, batch_size=4, num_workers=2))
    order = [targets2.index(t) for t in targets]  # workers interleave shards; each sample arrives once with its target
    assert sorted(map(tuple, targets)) == sorted(map(tuple, targets2))
    assert torch.allclose(serial, parallel[order], atol=1e-6)
