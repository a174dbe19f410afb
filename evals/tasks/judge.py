"""A VLM judge: a 1-5 rubric rating of how well a generated image follows its prompt (the paper's GPT-4V score),
through any OpenAI-compatible chat-completions endpoint serving a vision model (vLLM, SGLang, TGI, llama.cpp,
``transformers serve``, a hosted API).

Each (image, prompt) goes as one user message: the image as a PNG data URI, then the rubric with the prompt filled in;
``temperature=0`` and ``max_tokens`` keep the answer short and greedy. The rating is the first whole number 1-5 in the
answer; an answer without one is counted as ``unparseable`` and left out of the mean, never guessed. Requests run
``concurrency`` at a time; the openai client retries 408/409/429, 5xx and connection errors with back-off honouring
``Retry-After`` up to ``max_retries`` and times out after ``timeout_s`` (its own policy, as the recaption backend uses
it); what still fails is counted (``timeout``, ``server_error``) and is asked again by the next run. Ratings are cached
on disk per (sha256 of the image's pixels, prompt, judge model, rubric text, decoding), so a re-run asks nothing twice.
The key is read from the environment variable ``api_key_env``; a local server accepts any key.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from harness_infra.atomic import atomic_write_json
from harness_infra.errors import ConfigError, require
from harness_infra.identity import sha256_json

log = logging.getLogger(__name__)

RUBRICS: Dict[str, str] = {
    "alignment_1to5": (
        'You are judging a text-to-image model. The image was generated from this prompt:\n"{prompt}"\n'
        "Rate how well the image follows the prompt on a scale of 1 to 5: 1 = unrelated to the prompt; 2 = a few elements "
        "of the prompt appear; 3 = the main subject is right but several details (colours, counts, positions, attributes) "
        "are wrong or missing; 4 = almost everything in the prompt is depicted, with one small error; 5 = every element "
        "of the prompt is depicted exactly. Answer with the number only."
    ),
}
RATING = re.compile(r"(?<!\d)([1-5])(?!\d)")


@dataclass
class JudgeConfig:
    """Where and how to ask: ``base_url`` (``http://HOST:PORT/v1``), ``model`` (the served model's name), ``rubric`` (a
    name of ``RUBRICS`` or the text itself, with ``{prompt}``), ``concurrency``, ``timeout_s``, ``max_retries``,
    ``max_tokens``, ``api_key_env``."""

    base_url: str
    model: str
    rubric: str = "alignment_1to5"
    concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 3
    max_tokens: int = 8
    api_key_env: Optional[str] = "OPENAI_API_KEY"

    def __post_init__(self) -> None:
        require(
            self.base_url.startswith(("http://", "https://")),
            f"judge base_url={self.base_url!r} must be an http(s) URL such as http://127.0.0.1:8000/v1",
        )
        require(bool(self.model), "judge model must name the served vision model")
        require(
            "{prompt}" in self.rubric_text(),
            f"judge rubric {self.rubric!r} must be a name of {sorted(RUBRICS)} or a text with {{prompt}}",
        )
        require(
            self.concurrency >= 1 and self.timeout_s > 0 and self.max_retries >= 0 and self.max_tokens >= 1,
            "judge concurrency, timeout_s and max_tokens must be positive and max_retries >= 0",
        )

    def rubric_text(self) -> str:
        """The rubric's text (a named one or as given)."""
        return RUBRICS.get(self.rubric, self.rubric)

    def identity(self) -> Dict[str, Any]:
        """What a rating depends on besides the image and the prompt."""
        return {"judge": self.model, "rubric": self.rubric_text(), "temperature": 0, "max_tokens": self.max_tokens}


def parse_rating(text: Optional[str]) -> Optional[int]:
    """The first whole number 1-5 of an answer ("4", "Rating: 4/5", "**3**"), else None."""
    match = RATING.search(text or "")
    return int(match.group(1)) if match else None


def image_sha256(image: Any) -> str:
    """sha256 of an RGB PIL image's size and pixels."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.size}".encode())
    digest.update(np.asarray(rgb).tobytes())
    return digest.hexdigest()


def png_data_uri(image: Any) -> str:
    """An image as a ``data:image/png;base64,`` URI (the recaption backend's ``data_uri`` lives a layer beside this one)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class VlmJudge:
    """Ratings from one endpoint, cached under ``cache_dir`` (None: no cache)."""

    def __init__(self, cfg: JudgeConfig, cache_dir: Optional[str]) -> None:
        import openai

        self.cfg, self.errors = cfg, openai
        key = os.environ.get(cfg.api_key_env or "", "") or "not-needed"
        self.client = openai.OpenAI(
            base_url=cfg.base_url, api_key=key, max_retries=cfg.max_retries, timeout=cfg.timeout_s
        )
        self.folder = None if cache_dir is None else os.path.join(cache_dir, "vlm-judge")

    def _path(self, image_hash: str, prompt: str) -> Optional[str]:
        """Cache file of one rating."""
        if self.folder is None:
            return None
        key = sha256_json({"image": image_hash, "prompt": prompt, **self.cfg.identity()})
        return os.path.join(self.folder, key[:2], key + ".json")

    def _ask(self, image: Any, prompt: str) -> Tuple[Optional[int], str, Optional[str]]:
        """(rating or None, outcome, answer text) of one request (the client retries it)."""
        content = [
            {"type": "image_url", "image_url": {"url": png_data_uri(image)}},
            {"type": "text", "text": self.cfg.rubric_text().format(prompt=prompt)},
        ]
        try:
            answer = self.client.chat.completions.create(
                model=self.cfg.model,
                messages=[{"role": "user", "content": content}],
                temperature=0,
                max_tokens=self.cfg.max_tokens,
            )
            text = answer.choices[0].message.content
        except self.errors.APITimeoutError:
            return None, "timeout", None
        except (self.errors.APIStatusError, self.errors.APIConnectionError) as exc:
            log.warning("judge request failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None, "server_error", None
        except (AttributeError, IndexError, TypeError):
            return None, "server_error", None
        rating = parse_rating(text)
        return rating, "rated" if rating is not None else "unparseable", text

    def _one(self, pair: Tuple[Any, str]) -> Tuple[Optional[int], str]:
        """A cached rating, or one request whose settled outcome (rated or unparseable) is cached."""
        image, prompt = pair
        path = self._path(image_sha256(image), prompt)
        if path is not None and os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                stored = json.load(handle)
            return stored["rating"], "cached"
        rating, outcome, text = self._ask(image, prompt)
        if path is not None and outcome in ("rated", "unparseable"):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_json(
                path, {"rating": rating, "outcome": outcome, "answer": text, "prompt": prompt, **self.cfg.identity()}
            )
        return rating, outcome

    def rate(self, images: Sequence[Any], prompts: Sequence[str]) -> Tuple[List[Optional[int]], Dict[str, int]]:
        """(rating per image, None where none was obtained; counts per outcome: rated, cached, unparseable, timeout,
        server_error), ``concurrency`` requests in flight."""
        if len(images) != len(prompts):
            raise ConfigError(f"judge: {len(images)} images for {len(prompts)} prompts")
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            results = list(pool.map(self._one, zip(images, prompts)))
        counts: Dict[str, int] = {k: 0 for k in ("rated", "cached", "unparseable", "timeout", "server_error")}
        for _, outcome in results:
            counts[outcome] += 1
        return [r for r, _ in results], counts
