"""The ``openai`` backend: any OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, llama.cpp, ``transformers
serve``, a hosted API), through the official ``openai`` client.

Each image goes as a base64 data URI in one user message with the prompt; ``temperature=0`` and ``max_tokens`` give
greedy decoding up to the cap. Requests run ``concurrency`` at a time. The key is read from the environment variable
``api_key_env``; a local server accepts any key.

Answers fall in three kinds:

- transient (408, 409, 429, any 5xx, a timeout, a refused or dropped connection): retried ``max_retries`` times,
  waiting ``backoff_s``, ``2 * backoff_s``, ``4 * backoff_s``, ... capped at ``MAX_BACKOFF_S``; a ``Retry-After``
  header (seconds or an HTTP date, RFC 9110 Sec. 10.2.3) replaces that wait (capped the same). What still fails is a
  failure of that item, ``timeout`` or ``server_error``, counted and retried by the next run.
- permanent (401, 403, 404, or a 400/422 whose body says the model does not exist): the key, the URL or the model is
  wrong, and every other request would get the same answer. The captioner raises ``EndpointRefused`` (a one-line
  ``ConfigError`` naming the status, the endpoint and the model) at once, makes no further request, and the stage
  stops with no completion file written; nothing is counted per sample.
- any other 4xx (e.g. a 400 for one oversized request): a ``server_error`` of that item, not retried in this run.

The retries are this module's loop, not the openai library's: the client's own policy (``openai/_base_client.py``,
``_calculate_retry_timeout``) starts from the module constant ``INITIAL_RETRY_DELAY = 0.5`` s, caps at
``MAX_RETRY_DELAY = 8`` s and ignores ``Retry-After: 0``, with no public setting for the initial delay (only private
methods to override), so the client runs with ``max_retries=0`` and ``chat`` retries.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import io
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from harness_infra.errors import ConfigError, one_line
from recaption.captioner import Caption, Item, finish_text, generation_identity

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 60.0  # the longest wait between two tries of one request, Retry-After included
PERMANENT_STATUSES = (401, 403, 404)
MODEL_MISSING = re.compile(
    r"model.*(not exist|does not exist|not found|unknown|no such|not available|not served|invalid)|"
    r"(unknown|invalid|no such) model|model_not_found",
    re.IGNORECASE,
)
_CHECKED: Set[Tuple[str, str, str]] = (
    set()
)  # endpoints whose preflight passed in this process (the CLI validates twice)


class EndpointRefused(ConfigError):
    """The server gave a permanent answer (wrong key, URL or model); the message is one line naming the HTTP status,
    the endpoint and the model."""


def data_uri(image: Any, image_format: str) -> str:
    """An RGB PIL image as a ``data:image/...;base64,`` URI."""
    buffer = io.BytesIO()
    image.save(
        buffer,
        format="JPEG" if image_format == "jpeg" else "PNG",
        **({"quality": 95} if image_format == "jpeg" else {}),
    )
    return f"data:image/{image_format};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def transient_status(status: int) -> bool:
    """True for the HTTP statuses worth trying again (the set the openai client retries): 408, 409, 429, 5xx."""
    return status in (408, 409, 429) or status >= 500


def server_message(body: Any) -> str:
    """The error text of an answer's (already decoded) body: ``message`` / ``detail`` of a JSON error, else the text;
    one line of at most 200 characters."""
    if isinstance(body, Mapping):
        body = body.get("message") or body.get("detail") or body.get("error") or body
    return one_line(ValueError(str(body)))[:200] if body else ""


def permanent(status: int, body: Any) -> bool:
    """True when an answer means every request would fail alike: 401, 403, 404, or a 400/422 about a missing model."""
    return status in PERMANENT_STATUSES or (status in (400, 422) and bool(MODEL_MISSING.search(str(body))))


def retry_after_s(headers: Mapping[str, str], now: Optional[float] = None) -> Optional[float]:
    """The wait a ``Retry-After`` header asks for, in seconds (delay-seconds or an HTTP date; RFC 9110 Sec. 10.2.3);
    None when absent or unreadable."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def backoff_delay(retry: int, backoff_s: float, retry_after: Optional[float] = None) -> float:
    """Seconds to wait before retry number ``retry`` (0-based): ``backoff_s * 2**retry`` capped at ``MAX_BACKOFF_S``;
    a server's ``Retry-After`` (seconds) wins, capped the same."""
    if retry_after is not None:
        return min(retry_after, MAX_BACKOFF_S)
    return min(backoff_s * 2.0**retry, MAX_BACKOFF_S)


class OpenAICaptioner:
    """Captions from a chat-completions endpoint; ``EndpointRefused`` on a permanent answer (see the module doc)."""

    def __init__(self, cfg: Any) -> None:
        import openai

        self.cfg, self.endpoint = cfg, cfg.openai
        key = os.environ.get(self.endpoint.api_key_env or "", "") or "not-needed"
        self.client = openai.OpenAI(
            base_url=self.endpoint.base_url, api_key=key, max_retries=0, timeout=self.endpoint.timeout_s
        )
        self.errors = openai
        self.pool = ThreadPoolExecutor(max_workers=self.endpoint.concurrency)
        self.stop = threading.Event()  # set with ``refused``: no request starts or retries after a permanent answer
        self.refused: Optional[EndpointRefused] = None
        self.identity = {
            "captioner": f"openai:{cfg.model}",
            "endpoint": self.endpoint.base_url,
            "model": cfg.model,
            "weights_sha256": None,
            **generation_identity(cfg),
        }

    def refuse(self, exc: Any) -> EndpointRefused:
        """Record a permanent answer (``APIStatusError``) as this captioner's ``EndpointRefused`` and stop it."""
        status = exc.status_code
        if status in (401, 403):
            hint = (
                f"check the key in ${self.endpoint.api_key_env}"
                if self.endpoint.api_key_env
                else "set recaption.openai.api_key_env"
            )
        elif MODEL_MISSING.search(str(exc.body)):
            hint = "check recaption.model (the served model name)"
        else:
            hint = "check recaption.openai.base_url (up to and including /v1) and recaption.model"
        message = server_message(exc.body)
        refused = EndpointRefused(
            f"recaption.openai: {self.endpoint.base_url} answered HTTP {status} for model {self.cfg.model!r}"
            f"{': ' + message if message else ''}; {hint}"
        )
        if self.refused is None:
            self.refused = refused
        self.stop.set()
        return refused

    def chat(self, content: List[Dict[str, Any]], max_tokens: int) -> Any:
        """One chat completion, retried on transient answers (module doc); raises the last transient error once
        ``max_retries`` retries are spent, ``EndpointRefused`` on a permanent answer or once another thread got one."""
        for retry in range(self.endpoint.max_retries + 1):
            if self.stop.is_set():
                raise EndpointRefused(str(self.refused))
            try:
                return self.client.chat.completions.create(
                    model=self.cfg.model,
                    messages=[{"role": "user", "content": content}],
                    temperature=0,
                    max_tokens=max_tokens,
                )
            except self.errors.APIStatusError as exc:
                if permanent(exc.status_code, exc.body):
                    raise self.refuse(exc) from None
                if not transient_status(exc.status_code) or retry == self.endpoint.max_retries:
                    raise
                delay = backoff_delay(retry, self.endpoint.backoff_s, retry_after_s(exc.response.headers))
            except self.errors.APIConnectionError:  # timeouts included (APITimeoutError is a subclass)
                if retry == self.endpoint.max_retries:
                    raise
                delay = backoff_delay(retry, self.endpoint.backoff_s)
            self.stop.wait(delay)
        raise AssertionError("unreachable: the last try returns or raises")

    def content(self, image: Any, text: str) -> List[Dict[str, Any]]:
        """The user message of one request: the image as a data URI, then the instruction."""
        return [
            {"type": "image_url", "image_url": {"url": data_uri(image, self.endpoint.image_format)}},
            {"type": "text", "text": text},
        ]

    def _one(self, item: Item) -> Caption:
        """One item's request (``chat`` retries it); transient failures become counted reasons."""
        if self.stop.is_set():
            raise EndpointRefused(str(self.refused))
        if item.image is None:
            return Caption.failed("undecodable_image")
        try:
            answer = self.chat(self.content(item.image, self.cfg.prompt_for(item.original)), self.cfg.max_new_tokens)
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
        """Captions of a batch, ``concurrency`` requests in flight; raises ``EndpointRefused`` on a permanent answer."""
        return list(self.pool.map(self._one, items))

    def check(self) -> None:
        """Preflight: one real request (a 32x32 grey image, the prompt, ``max_tokens=1``), retried like any request.
        Raises ``EndpointRefused`` on a permanent answer and a one-line ``ConfigError`` when the server cannot be
        reached or keeps failing."""
        from PIL import Image

        try:
            self.chat(self.content(Image.new("RGB", (32, 32), (128, 128, 128)), self.cfg.prompt_for(None)), 1)
        except self.errors.APIStatusError as exc:
            tries = f" after {self.endpoint.max_retries} retries" if transient_status(exc.status_code) else ""
            raise ConfigError(
                f"recaption.openai: {self.endpoint.base_url} answered HTTP {exc.status_code}{tries} to a chat request "
                f"for model {self.cfg.model!r}: {server_message(exc.body) or 'no message'}"
            ) from None
        except self.errors.APIConnectionError as exc:
            raise ConfigError(
                f"recaption.openai: {self.endpoint.base_url} cannot be reached ({one_line(exc).rstrip('.')}) after "
                f"{self.endpoint.max_retries} retries; is the server running at that URL?"
            ) from None
        finally:
            self.pool.shutdown()


def check_endpoint(cfg: Any) -> None:
    """Preflight of the ``openai`` backend (``OpenAICaptioner.check``), once per endpoint, model and key per process."""
    key = os.environ.get(cfg.openai.api_key_env or "", "")
    seen = (cfg.openai.base_url, cfg.model, hashlib.sha256(key.encode("utf-8")).hexdigest())
    if seen in _CHECKED:
        return
    OpenAICaptioner(cfg).check()
    _CHECKED.add(seen)
