"""Text padding trimming stays on under bf16 autocast (its agreement check runs in fp32)."""

from __future__ import annotations

import logging

import open_clip
import torch

from evals.tasks.config import EvalConfig
from evals.tasks.embeddings import encode_texts


def test_bf16_keeps_trimming_and_stays_close_to_fp32(caplog):
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=16, layers=1, width=32, patch_size=8, head_width=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
    ).eval()
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=77)
    texts = [f"a photo of a {w} number {i}" for i in range(12) for w in ("dog", "cat")]
    with caplog.at_level(logging.WARNING, logger="evals.tasks.embeddings"):
        low, _ = encode_texts(model, tokenizer, texts, EvalConfig(batch_size=8, cache_dir=None, precision="bf16"))
    assert not [r for r in caplog.records if "trimmed text encoding disagrees" in r.getMessage()]
    full, _ = encode_texts(model, tokenizer, texts, EvalConfig(batch_size=8, cache_dir=None, precision="fp32"))
    assert float((low - full).abs().max()) < 0.05
