"""Token counts of captions under an open_clip tokenizer (truncation happens when count > context length)."""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np
import torch


def token_counts(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Tokens per text including start/end tokens, before any truncation.

    open_clip SimpleTokenizer: len(encode(text)) + 2; HF tokenizers: len(input_ids) with special tokens;
    other tokenizers: non-padding positions at a 4096 context.
    """
    if (
        hasattr(tokenizer, "encode")
        and hasattr(tokenizer, "sot_token_id")
        and getattr(tokenizer, "reduction_fn", None) is None
    ):
        return np.array([len(tokenizer.encode(t)) + 2 for t in texts], dtype=np.int64)
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and callable(inner):
        return np.array([len(ids) for ids in inner(list(texts))["input_ids"]], dtype=np.int64)
    counts = []
    for start in range(0, len(texts), 256):
        tokens = tokenizer(list(texts[start : start + 256]), context_length=4096)
        counts.extend((tokens != 0).sum(dim=1).tolist())
    return np.array(counts, dtype=np.int64)


def _is_plain_simple_tokenizer(tokenizer: Any) -> bool:
    """open_clip's SimpleTokenizer without a reduction strategy (its truncation rule is known exactly)."""
    from open_clip.tokenizer import SimpleTokenizer

    return isinstance(tokenizer, SimpleTokenizer) and getattr(tokenizer, "reduction_fn", None) is None


def tokenize_with_truncation(
    tokenizer: Any, texts: Sequence[str], context_length: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(tokens exactly as ``tokenizer(texts, context_length)``, bool mask of texts longer than the context).

    For SimpleTokenizer one pass at context_length + 1 gives both: a text is truncated iff position
    context_length is non-padding, and the context-length tokens are the first context_length columns with
    the last one set to end-of-text when truncated (SimpleTokenizer's own rule). Other tokenizers are run
    once for tokens and once for counts.
    """
    if not _is_plain_simple_tokenizer(tokenizer):
        tokens = tokenizer(list(texts), context_length=context_length)
        return tokens, torch.from_numpy(token_counts(tokenizer, texts) > context_length)
    wide = tokenizer(list(texts), context_length=context_length + 1)
    truncated = wide[:, context_length] != 0
    tokens = wide[:, :context_length].clone()
    tokens[truncated, context_length - 1] = tokenizer.eot_token_id
    return tokens, truncated
