"""The ``vllm`` backend: vLLM's offline ``LLM.chat`` with one image per conversation, the GPU throughput path.

Greedy ``SamplingParams(temperature=0, max_tokens=max_new_tokens)``; the model's own chat template. Needs
``pip install vllm`` and a GPU; where vLLM is not installed, building this captioner is a one-line ConfigError.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, List

from harness_infra.errors import ConfigError
from recaption.backends.weights import weights_identity
from recaption.captioner import Caption, Item, finish_text, generation_identity

log = logging.getLogger(__name__)


def vllm_missing_reason() -> str:
    """Why the vllm backend cannot run here ('' when it can)."""
    if importlib.util.find_spec("vllm") is None:
        return "recaption.backend=vllm needs vLLM (pip install vllm, on a machine with a GPU); it is not installed here"
    return ""


class VLLMCaptioner:
    """Captions from a vLLM engine in this process."""

    def __init__(self, cfg: Any) -> None:
        reason = vllm_missing_reason()
        if reason:
            raise ConfigError(reason)
        from vllm import LLM, SamplingParams

        self.cfg = cfg
        dtype = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[cfg.precision]
        self.llm = LLM(model=cfg.model, revision=cfg.revision, dtype=dtype, limit_mm_per_prompt={"image": 1})
        self.params = SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens)
        self.identity = {
            "captioner": f"vllm:{cfg.model}",
            **weights_identity(cfg.model, cfg.revision),
            **generation_identity(cfg),
        }

    def caption(self, items: List[Item]) -> List[Caption]:
        """Captions of a batch in one ``LLM.chat`` call."""
        todo = [n for n, item in enumerate(items) if item.image is not None]
        out: List[Caption] = [Caption.failed("undecodable_image")] * len(items)
        conversations = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_pil", "image_pil": items[n].image},
                        {"type": "text", "text": self.cfg.prompt_for(items[n].original)},
                    ],
                }
            ]
            for n in todo
        ]
        try:
            results = self.llm.chat(conversations, self.params, use_tqdm=False) if todo else []
        except Exception as exc:  # noqa: BLE001  (an engine error fails the batch, counted and retried)
            log.warning("vLLM generation failed for a batch of %d: %s", len(todo), exc)
            return [
                Caption.failed("generation_error") if items[n].image is not None else out[n] for n in range(len(items))
            ]
        for n, result in zip(todo, results):
            completion = result.outputs[0]
            out[n] = finish_text(
                completion.text,
                self.cfg,
                tokens=len(completion.token_ids),
                truncated=completion.finish_reason == "length",
            )
        return out
