"""Checks of a captioner configuration that need the machine (installed packages, files), run before any stage.

``python -m evals.run`` calls ``preflight`` (through ``pipeline.schema.validate``, before Hydra launches any job and again
before a job's first stage) when ``run.stages`` lists ``recaption``, so a missing vLLM, a parquet glob that matches
nothing, or an ``openai`` server that is down or refuses the key or the model is a one-line error at start-up, not after
the shard build.
"""

from __future__ import annotations

from typing import Any

from harness_infra.errors import ConfigError


def preflight(cfg: Any) -> None:
    """One-line ConfigError for a backend that cannot run here or inputs that do not exist. The ``openai`` backend
    makes one real chat request (``recaption.backends.openai_api.check_endpoint``; once per endpoint per process)."""
    if cfg.backend == "vllm":
        from recaption.backends.vllm import vllm_missing_reason

        reason = vllm_missing_reason()
        if reason:
            raise ConfigError(reason)
    if cfg.backend == "precomputed":
        from recaption.backends.precomputed import parquet_files

        parquet_files(list(cfg.precomputed.parquet))
    if cfg.backend == "rewrite":
        from recaption.backends.offline import resolve_model

        resolve_model(cfg.model, cfg.gguf_file)
    if cfg.backend == "openai":
        from recaption.backends.openai_api import check_endpoint

        check_endpoint(cfg)
