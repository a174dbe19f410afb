"""Exact text-padding trimming for open_clip text towers: encode only up to a batch's longest caption.

A causal open_clip text transformer with EOT (argmax/eos) pooling never lets a position attend to the padding after
it, and a Hugging Face tower masks padding out of attention and pooling; for both, dropping the all-padding token
columns of a batch leaves every embedding unchanged (up to float summation order) and saves the work on them.
Web alt-text is 10-18 tokens against a context of 77-128, so most of the text tower's work would be padding.
"""

from __future__ import annotations

from typing import Optional

import torch


def text_pad_id(model: torch.nn.Module) -> Optional[int]:
    """The padding token id of a Hugging Face text tower (open_clip ``HFTextEncoder``), else None.

    Such a tower masks padding out of attention and pooling, so dropping all-padding token columns of a batch
    leaves its output unchanged (up to float summation order) and saves the work on them.
    """
    config = getattr(getattr(model, "text", None), "config", None)
    pad = getattr(config, "pad_token_id", None)
    return int(pad) if pad is not None and hasattr(model.text, "pooler") else None


def trim_padding(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``tokens[:, :L]``, L = 1 + the last column holding a non-padding token in any row (at least 1)."""
    nonpad = (tokens != pad_id).any(dim=0).nonzero()
    length = int(nonpad[-1]) + 1 if len(nonpad) else 1
    return tokens[:, :length]


def token_lengths(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Per row: 1 + index of the last non-padding token (0 for an all-padding row)."""
    nonpad = tokens != pad_id
    last = tokens.shape[1] - nonpad.flip(1).to(torch.int8).argmax(dim=1)
    return torch.where(nonpad.any(dim=1), last, torch.zeros_like(last))


def trim_pad_id(model: torch.nn.Module) -> Optional[int]:
    """The id whose trailing columns may be dropped for this model, or None when trimming is not exact.

    A Hugging Face tower's ``pad_token_id``; 0 for an open_clip ``CLIP`` with a causal mask and EOT pooling (its
    tokenizer pads with 0 after the end-of-text token, which is never 0, so only true padding columns go); None
    otherwise (CoCa's decoder reads every position; a non-causal tower attends to the padding).
    """
    pad = text_pad_id(model)
    if pad is not None:
        return pad
    return 0 if can_trim_text(model) and not hasattr(model, "text_decoder") else None


def can_trim_text(model: torch.nn.Module) -> bool:
    """True for open_clip.CLIP with a causal text mask and argmax/EOS pooling, and for Hugging Face text towers
    (they mask padding out of attention and pooling): padding trimming is exact."""
    import open_clip

    causal = (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )
    return causal or text_pad_id(model) is not None


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on ``tokens[:, :L]``, L = longest non-padding length in the batch (open_clip ``CLIP``:
    positional embeddings and causal mask cut to L; Hugging Face towers: the padding mask does the rest).
    The one trimmed text forward of the project: evaluation (``evals.tasks.embeddings``) and training
    (``TrimmedTextCLIP``) both call it. ``tokens``: B x T token ids, T <= the context length; returns B x D
    (not normalised), with autograd when called outside ``no_grad``.

    Why not ``model.encode_text(tokens[:, :L])``: open_clip 3.x ``CLIP.encode_text`` adds the full positional
    embedding and mask, so it only accepts full-length token rows; the body below is that method with both cut to L.
    """
    from open_clip.transformer import text_global_pool

    pad_id = text_pad_id(model)
    if pad_id is not None:
        return model.encode_text(trim_padding(tokens, pad_id))
    length = max(int(token_lengths(tokens).max()), 1)
    text = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = (
            model.text_projection(x)
            if isinstance(model.text_projection, torch.nn.Linear)
            else x @ model.text_projection
        )
    return x


class TrimmedTextCLIP(torch.nn.Module):
    """An open_clip ``CLIP`` whose ``forward(image, text)`` equals the model's own (``output_dict`` form: normalised
    image and text features, ``logit_scale.exp()``, ``logit_bias`` when present) with the text tower run by
    ``encode_text_trimmed``: token batches may be cut to their longest caption (``trim_padding``). The parameters
    are the wrapped model's, so checkpoints and exports are unchanged.
    """

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        """The wrapped model's logit scale (clamped by the optimizer step)."""
        return self.clip.logit_scale

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict:
        """Contrastive outputs of a batch of (pixels B x 3 x H x W, tokens B x T)."""
        import torch.nn.functional as F

        out = {
            "image_features": self.clip.encode_image(image, normalize=True),
            "text_features": F.normalize(encode_text_trimmed(self.clip, text), dim=-1),
            "logit_scale": self.clip.logit_scale.exp(),
        }
        if getattr(self.clip, "logit_bias", None) is not None:
            out["logit_bias"] = self.clip.logit_bias
        return out
