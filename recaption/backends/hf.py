"""The ``hf`` backend: any transformers image-text-to-text model (LLaVA-1.5/NeXT, Qwen2-VL/2.5-VL, ...).

``AutoProcessor`` + ``AutoModelForImageTextToText`` from a local folder or hub id, the processor's own chat template
with one image and the prompt, batched greedy decoding (left padding) up to ``max_new_tokens``; bf16 on GPU
(``precision=auto``), fp32 on CPU. A batch that raises is retried one item at a time, so one bad image fails alone.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List

import torch

from recaption.backends.weights import weights_identity
from recaption.captioner import Caption, Item, finish_text, generation_identity

log = logging.getLogger(__name__)


def torch_setup(cfg: Any) -> tuple:
    """(device, dtype) for ``recaption.device`` / ``recaption.precision``."""
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return device, {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def eos_ids(model: Any, tokenizer: Any) -> set:
    """Token ids that end generation: the generation config's (an id or a list) and the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tokenizer.eos_token_id}
    return {i for i in ids if i is not None}


def split_generated(row: List[int], eos: set, max_new_tokens: int) -> tuple:
    """(ids before the first end token, whether generation stopped at the cap instead of an end token)."""
    ended = next((k for k, t in enumerate(row) if t in eos), None)
    body = row if ended is None else row[:ended]
    return body, ended is None and len(body) >= max_new_tokens


class HFCaptioner:
    """A transformers vision-language model behind the ``Captioner`` protocol."""

    def __init__(self, cfg: Any) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg = cfg
        self.device, self.dtype = torch_setup(cfg)
        self.processor = AutoProcessor.from_pretrained(cfg.model, revision=cfg.revision)
        self.processor.tokenizer.padding_side = "left"  # generation continues every row at its end
        self.model = (
            AutoModelForImageTextToText.from_pretrained(cfg.model, revision=cfg.revision, dtype=self.dtype)
            .to(self.device)
            .eval()
        )
        self.eos = eos_ids(self.model, self.processor.tokenizer)
        self.identity: Dict[str, Any] = {
            "captioner": f"hf:{cfg.model}",
            "class": type(self.model).__name__,
            **weights_identity(cfg.model, cfg.revision),
            **generation_identity(cfg),
        }

    def _prompt(self, item: Item) -> str:
        """The chat-formatted prompt with one image."""
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": self.cfg.prompt_for(item.original)}],
            }
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    @torch.inference_mode()
    def _generate(self, items: List[Item]) -> List[Caption]:
        """One batched greedy generate call."""
        inputs = self.processor(
            images=[i.image for i in items], text=[self._prompt(i) for i in items], return_tensors="pt", padding=True
        )
        inputs = {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
        }
        out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False, num_beams=1)
        new = out[:, inputs["input_ids"].shape[1] :].cpu()
        captions = []
        for row in new.tolist():
            body, truncated = split_generated(row, self.eos, self.cfg.max_new_tokens)
            text = self.processor.tokenizer.decode(body, skip_special_tokens=True)
            captions.append(finish_text(text, self.cfg, tokens=len(body), truncated=truncated))
        return captions

    def caption(self, items: List[Item]) -> List[Caption]:
        """Captions of a batch; undecodable images fail alone, a raising batch is retried one item at a time."""
        results: List[Caption] = [Caption.failed("undecodable_image") if i.image is None else None for i in items]
        todo = [n for n, r in enumerate(results) if r is None]
        if not todo:
            return results
        try:
            for n, caption in zip(todo, self._generate([items[n] for n in todo])):
                results[n] = caption
        except Exception as exc:  # noqa: BLE001  (isolate the item that breaks generation)
            log.warning("batch generation failed (%s); captioning its %d items one at a time", exc, len(todo))
            for n in todo:
                try:
                    results[n] = self._generate([items[n]])[0]
                except Exception as single:  # noqa: BLE001
                    log.warning("generation failed for %s: %s", items[n].key, single)
                    results[n] = Caption.failed("generation_error")
        return results
