"""The ``openai`` backend: any OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, llama.cpp, ``transformers
serve``, a hosted API), through the official ``openai`` client.

Each image goes as a base64 data URI in one user message with the prompt; ``temperature=0`` and ``max_tokens`` give
greedy decoding up to the cap. Requests run ``concurrency`` at a time. The client retries 408/409/429 and 5xx answers
and connection errors and timeouts, ``max_retries`` times with exponential back-off honouring ``Retry-After`` (the
openai library's own policy; not re-implemented here). What still fails is a failure of that item: ``timeout`` or
``server_error``, counted and retried by the next run. The key is read from the environment variable
``api_key_env``; a local server accepts any key.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List

from recaption.captioner import Caption, Item, finish_text, generation_identity

log = logging.getLogger(__name__)


def data_uri(image: Any, image_format: str) -> str:
    """An RGB PIL image as a ``data:image/...;base64,`` URI."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if image_format == "jpeg" else "PNG", **({"quality": 95} if image_format == "jpeg" else {}))
    return f"data:image/{image_format};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


class OpenAICaptioner:
    """Captions from a chat-completions endpoint."""

    def __init__(self, cfg: Any) -> None:
        import openai

        self.cfg, self.endpoint = cfg, cfg.openai
        key = os.environ.get(self.endpoint.api_key_env or "", "") or "not-needed"
        self.client = openai.OpenAI(base_url=self.endpoint.base_url, api_key=key, max_retries=self.endpoint.max_retries,
                                    timeout=self.endpoint.timeout_s)
        self.errors = openai
        self.pool = ThreadPoolExecutor(max_workers=self.endpoint.concurrency)
        self.identity = {"captioner": f"openai:{cfg.model}", "endpoint": self.endpoint.base_url, "model": cfg.model,
                         "weights_sha256": None, **generation_identity(cfg)}

    def _one(self, item: Item) -> Caption:
        """One request (the client retries it); failures become counted reasons."""
        if item.image is None:
            return Caption.failed("undecodable_image")
        content = [{"type": "image_url", "image_url": {"url": data_uri(item.image, self.endpoint.image_format)}},
                   {"type": "text", "text": self.cfg.prompt_for(item.original)}]
        try:
            answer = self.client.chat.completions.create(model=self.cfg.model, messages=[{"role": "user", "content": content}],
                                                         temperature=0, max_tokens=self.cfg.max_new_tokens)
        except self.errors.APITimeoutError:
            return Caption.failed("timeout")
        except (self.errors.APIStatusError, self.errors.APIConnectionError) as exc:
            log.warning("%s: %s", item.key, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return Caption.failed("server_error")
        try:
            choice = answer.choices[0]
            text, reason = choice.message.content, choice.finish_reason
        except (AttributeError, IndexError, TypeError):
            return Caption.failed("server_error")
        tokens = getattr(getattr(answer, "usage", None), "completion_tokens", 0) or 0
        return finish_text(text, self.cfg, tokens=tokens, truncated=reason == "length")

    def caption(self, items: List[Item]) -> List[Caption]:
        """Captions of a batch, ``concurrency`` requests in flight."""
        return list(self.pool.map(self._one, items))
