"""Typed configuration of the recaption stage (the ``recaption:`` Hydra group), validated with one-line errors.

The paper's recipe is the default: the LLaVA-1.5 prompt "Please generate a detailed caption of this image. Please be as
descriptive as possible.", greedy decoding, at most 128 new tokens (Li et al. 2024, arXiv 2406.08478, Sec. 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from captiondata.realised import MIN_COVERAGE
from harness_infra.errors import require
from harness_infra.stagecache import setting

BACKENDS = ("precomputed", "hf", "vllm", "openai", "coca", "rewrite", "faithfulness")
PAPER_PROMPT = "Please generate a detailed caption of this image. Please be as descriptive as possible."
CONDITIONED_PROMPT = (
    "Please generate a detailed caption of this image. Please be as descriptive as possible. "
    'The image\'s web alt-text, which may be noisy or unrelated, is: "{original}"'
)
REWRITE_PROMPT = (
    "Rewrite this image alt-text as one detailed, fluent caption of the image. Keep every fact it states and "
    'invent nothing. Alt-text: "{original}"'
)
LAYOUT_MODES = ("replace", "add")
JOIN_KEYS = ("key", "sha256", "url")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class OpenAIEndpoint:
    """An OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, llama.cpp, ``transformers serve``, a hosted API).

    ``base_url``: up to and including ``/v1``. ``api_key_env``: environment variable holding the key (never the key
    itself in a config). ``concurrency``: requests in flight at once. ``max_retries``: retries of a request that got
    408, 409, 429, a 5xx, a timeout or a connection error, waiting ``backoff_s`` seconds before the first, doubling,
    capped at 60 s (a ``Retry-After`` header wins); 401, 403, 404 and an unknown model stop the stage at once
    (``recaption.backends.openai_api``). ``timeout_s``: per request, seconds.
    """

    base_url: str = setting("http://127.0.0.1:8000/v1", key=False)
    api_key_env: Optional[str] = setting("OPENAI_API_KEY", key=False)
    concurrency: int = setting(8, key=False)
    max_retries: int = setting(4, key=False)
    backoff_s: float = setting(1.0, key=False)
    timeout_s: float = setting(120.0, key=False)
    image_format: str = "jpeg"


@dataclass
class Faithfulness:
    """The ``faithfulness`` backend's error rates (``recaption.backends.faithfulness``): ``attribute_error`` = the
    probability that each stated attribute of a described object (count, size, colour, texture, position) is replaced
    by a value the scene does not have for it; ``omitted`` = the probability that each object is left out;
    ``invented`` = the probability, per object of the scene, that the caption adds an object of a shape the scene
    does not have; ``seed`` with the sample key seeds every draw."""

    attribute_error: float = 0.0
    invented: float = 0.0
    omitted: float = 0.0
    seed: int = 0

    def check(self) -> None:
        """One-line ConfigError for a rate outside [0, 1]."""
        for name in ("attribute_error", "invented", "omitted"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"recaption.faithfulness.{name}={value} is outside [0, 1]")


@dataclass
class PrecomputedCaptions:
    """Recap-DataComp-1B parquet shards joined to your shards.

    ``parquet``: a path, glob or list of them (columns url, re_caption, org_caption, sha256, key, ...). ``join_on``:
    ``key`` (the sample key), ``sha256`` (of the image bytes) or ``url`` (the ``url`` field of the sample's ``.json``,
    as img2dataset writes it). ``column``: the caption column.
    """

    parquet: List[str] = field(default_factory=list)
    join_on: str = "key"
    column: str = "re_caption"


@dataclass
class RecaptionConfig:
    """What recaptions the shards and how.

    ``name``: the recaption's member name: each sample gains ``KEY.{name}.txt`` (the caption) and ``KEY.{name}.json``
    (its provenance); several captioners can coexist in one shard under different names. ``backend``: one of
    ``BACKENDS``. ``model``: local folder, hub id, served model name or open_clip ``NAME:PRETRAINED`` (per backend).
    ``prompt``: the instruction; ``condition_on_original`` uses ``conditioned_prompt`` (with ``{original}``) for
    samples that have an alt-text (Recap-DataComp v2 style). ``max_new_tokens``: generation cap (the paper: 128);
    decoding is greedy. ``max_words``: a caption longer than this is a failure (``over_length``); null = no limit.
    ``batch_size``: images per generate call. ``num_workers``: decoding threads that prepare the next batch while
    the model generates. ``precision``: ``auto`` (bf16 on CUDA, fp32 on CPU). ``splits``: which splits of the data
    set are recaptioned (the others are read from the data stage as they are). ``layout_mode``: ``replace`` (the
    trainer's recaption is this one only) or ``add`` (pooled with the data set's existing recaptions).
    ``retry_failed``: a later run captions the transient failures (server errors, timeouts, generation errors) again. ``engine``: ``local`` (one process, or torchrun
    ranks splitting the shards) or ``ray`` (Ray Data: the shard list mapped by an actor pool of ``ray_actors``
    captioners, ``ray_gpus_per_actor`` GPUs each, on the cluster at ``ray_address``; null starts a local one).
    ``min_coverage``: the least share of samples that must end with a usable recaption when the label draws from
    recaptions (p < 1); below it the run stops with a ``LabelError`` and publishes nothing (``captiondata.realised``).
    ``gguf_file``: a GGUF weights file inside ``model`` (transformers ``gguf_file=``; the ``rewrite`` backend).
    """

    name: str = "llava"
    backend: str = "hf"
    model: str = ""
    revision: Optional[str] = None
    prompt: str = PAPER_PROMPT
    condition_on_original: bool = False
    conditioned_prompt: str = CONDITIONED_PROMPT
    max_new_tokens: int = 128
    max_words: Optional[int] = 400
    batch_size: int = setting(8, key=False)
    num_workers: int = setting(2, key=False)
    precision: str = "auto"
    device: str = setting("auto", key=False)
    splits: List[str] = field(default_factory=lambda: ["train"])
    layout_mode: str = setting("replace", key=False)  # how the trainer reads the captions: the train stage's key has it
    retry_failed: bool = setting(True, key=False)
    min_coverage: float = setting(MIN_COVERAGE, key=False)
    engine: str = setting("local", key=False)
    ray_address: Optional[str] = setting(None, key=False)
    ray_actors: int = setting(2, key=False)
    ray_gpus_per_actor: float = setting(0.0, key=False)
    gguf_file: Optional[str] = None
    openai: OpenAIEndpoint = field(default_factory=OpenAIEndpoint)
    precomputed: PrecomputedCaptions = field(default_factory=PrecomputedCaptions)
    faithfulness: Faithfulness = field(default_factory=Faithfulness)

    def __post_init__(self) -> None:
        require(
            bool(self.name) and all(c.isalnum() or c in "_-" for c in self.name),
            f"recaption.name={self.name!r} must be a non-empty member name of letters, digits, '_' or '-'",
        )
        require(
            self.backend in BACKENDS,
            f"recaption.backend={self.backend!r} is unknown; choose one of {', '.join(BACKENDS)}",
        )
        if not isinstance(self.faithfulness, Faithfulness):
            self.faithfulness = Faithfulness(**self.faithfulness)
        self.faithfulness.check()
        require(
            self.backend in ("precomputed", "faithfulness") or bool(self.model),
            f"recaption.model must name the {self.backend} captioner (path, hub id or served name)",
        )
        require(
            self.backend != "precomputed" or bool(self.precomputed.parquet),
            "recaption.precomputed.parquet must list the Recap-DataComp parquet files",
        )
        require(
            self.precomputed.join_on in JOIN_KEYS,
            f"recaption.precomputed.join_on={self.precomputed.join_on!r} is unknown; choose one of {', '.join(JOIN_KEYS)}",
        )
        require(self.max_new_tokens > 0, f"recaption.max_new_tokens={self.max_new_tokens} must be positive")
        require(
            self.max_words is None or self.max_words > 0,
            f"recaption.max_words={self.max_words} must be positive or null",
        )
        require(self.batch_size > 0, f"recaption.batch_size={self.batch_size} must be positive")
        require(self.num_workers >= 0, f"recaption.num_workers={self.num_workers} must be >= 0")
        require(
            self.precision in PRECISIONS,
            f"recaption.precision={self.precision!r} is unknown; choose one of {', '.join(PRECISIONS)}",
        )
        require(
            len(self.splits) > 0 and all(s in ("train", "val", "test") for s in self.splits),
            f"recaption.splits={list(self.splits)} must list some of train, val, test",
        )
        require(
            self.layout_mode in LAYOUT_MODES,
            f"recaption.layout_mode={self.layout_mode!r} is unknown; choose replace or add",
        )
        require("{original}" in self.conditioned_prompt, "recaption.conditioned_prompt must contain {original}")
        require(
            self.backend != "rewrite" or "{original}" in self.prompt,
            "recaption.prompt of the rewrite backend must contain {original} (the alt-text)",
        )
        require(self.engine in ("local", "ray"), f"recaption.engine={self.engine!r} is unknown; choose local or ray")
        require(0.0 <= self.min_coverage <= 1.0, f"recaption.min_coverage={self.min_coverage} must be in [0, 1]")
        require(self.ray_actors > 0, f"recaption.ray_actors={self.ray_actors} must be positive")
        require(self.openai.concurrency > 0, f"recaption.openai.concurrency={self.openai.concurrency} must be positive")
        require(self.openai.max_retries >= 0, f"recaption.openai.max_retries={self.openai.max_retries} must be >= 0")
        require(self.openai.backoff_s >= 0, f"recaption.openai.backoff_s={self.openai.backoff_s} must be >= 0")
        require(self.openai.timeout_s > 0, f"recaption.openai.timeout_s={self.openai.timeout_s} must be positive")
        require(
            self.openai.image_format in ("jpeg", "png"),
            f"recaption.openai.image_format={self.openai.image_format!r}: choose jpeg or png",
        )

    def prompt_for(self, original: Optional[str]) -> str:
        """The instruction for one sample: conditioned on its alt-text when configured and present."""
        if self.backend == "rewrite":
            return self.prompt.replace("{original}", original or "")
        if self.condition_on_original and original:
            return self.conditioned_prompt.replace("{original}", original)
        return self.prompt
