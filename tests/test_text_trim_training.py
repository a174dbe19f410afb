"""Text-padding trimming in the training step is exact for open_clip's causal text tower (issue 15, item 1)."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip import ClipLoss
from open_clip.tokenizer import SimpleTokenizer

from towers.text_trim import TrimmedTextCLIP, trim_pad_id, trim_padding

CFG = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
    text_cfg=dict(context_length=128, vocab_size=49408, width=32, heads=2, layers=2),
)


def loss_and_grads(model, forward, images, tokens):
    model.zero_grad(set_to_none=True)
    out = forward(images, tokens)
    out = out if isinstance(out, dict) else dict(zip(("image_features", "text_features", "logit_scale"), out))
    loss = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def close(a, b):
    """Equal up to float summation order: max |a - b| within 1e-5 of the tensor's largest entry."""
    return float((a - b).abs().max()) <= 1e-5 * max(float(a.abs().max()), 1e-6)


def test_trimmed_step_equals_the_full_context_step():
    torch.manual_seed(0)
    model = open_clip.CLIP(**CFG)
    tokens = SimpleTokenizer(context_length=128)(["a dog", "two cats on a red sofa!", "a very long caption " * 4, "x"])
    images = torch.randn(4, 3, 32, 32)
    assert trim_pad_id(model) == 0
    trimmed_tokens = trim_padding(tokens, 0)
    assert trimmed_tokens.shape[1] < 30  # the work left: the longest caption, not 128 positions
    full_loss, full_grads = loss_and_grads(model, model, images, tokens)
    trim_loss, trim_grads = loss_and_grads(model, TrimmedTextCLIP(model), images, trimmed_tokens)
    assert trim_loss == pytest.approx(float(full_loss), rel=1e-5, abs=1e-6)
    assert full_grads.keys() == trim_grads.keys()
    for name, grad in full_grads.items():
        if name == "positional_embedding":  # rows past the longest caption get exactly zero gradient either way
            assert torch.count_nonzero(grad[trimmed_tokens.shape[1] :]) == 0
            grad = grad[: trimmed_tokens.shape[1]]
            trim = trim_grads[name]
            assert (
                close(trim[: trimmed_tokens.shape[1]], grad)
                and torch.count_nonzero(trim[trimmed_tokens.shape[1] :]) == 0
            )
            continue
        assert close(trim_grads[name], grad), name


def test_trimming_is_refused_where_it_would_not_be_exact():
    bidirectional = open_clip.CLIP(
        **{**CFG, "text_cfg": {**CFG["text_cfg"], "no_causal_mask": True, "pool_type": "first"}}
    )
    assert trim_pad_id(bidirectional) is None
    coca = open_clip.CoCa(
        embed_dim=32,
        vision_cfg=CFG["vision_cfg"],
        text_cfg={**CFG["text_cfg"], "context_length": 16},
        multimodal_cfg=dict(context_length=16, width=32, heads=2, layers=1, vocab_size=49408),
    )
    assert trim_pad_id(coca) is None
