"""train_clip.models: the paper's model configs, the tiny config, stage resizing and the open_clip export."""

from __future__ import annotations

import json
import os

import open_clip
import pytest
import torch
from safetensors.torch import load_file

import train_clip  # noqa: F401
from harness_infra.errors import ConfigError
from train_clip.config import ClipModelConfig
from train_clip.models import (
    create_clip,
    create_tokenizer,
    export_model,
    load_exported,
    register_inline,
    resize_for_stage,
    resolved_model_config,
)

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CPU = torch.device("cpu")

# (embed; vision layers/width/heads) and text (layers/width/heads), from the paper's model table.
VISION = {"S-16": (384, 12, 384, 6), "B-16": (512, 12, 768, 12), "L-16": (768, 24, 1024, 16)}
TEXT = {"small": (12, 384, 6), "base": (12, 512, 8), "large": (12, 768, 12), "huge": (24, 1024, 16)}


def micro_cfg(tmp_path, **kw) -> ClipModelConfig:
    """The micro test model, registered under its name."""
    cfg = ClipModelConfig(name="TestCLIP-micro", inline=MICRO, **kw)
    register_inline(cfg, str(tmp_path))
    return cfg


@pytest.mark.parametrize("vision", sorted(VISION))
@pytest.mark.parametrize("text", sorted(TEXT))
def test_paper_configs_are_registered_with_the_papers_sizes(vision, text):
    cfg = open_clip.get_model_config(f"RecapCLIP-ViT-{vision}-text-{text}")
    embed, v_layers, v_width, v_heads = VISION[vision]
    t_layers, t_width, t_heads = TEXT[text]
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    assert cfg["embed_dim"] == embed
    assert (v["layers"], v["width"], v["width"] // v["head_width"], v["patch_size"]) == (v_layers, v_width, v_heads, 16)
    assert (t["layers"], t["width"], t["heads"], t["context_length"]) == (t_layers, t_width, t_heads, 128)


def test_tiny_config_builds_and_its_tokenizer_matches():
    cfg = ClipModelConfig()
    model = create_clip(cfg, 64, CPU)
    tokens = create_tokenizer(cfg)(["a photo of a dog", "a cat"])
    assert tokens.shape == (2, 32)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 64), tokens)
    assert out["image_features"].shape == (2, 128) if isinstance(out, dict) else out[0].shape == (2, 128)
    assert sum(p.numel() for p in model.parameters()) < 12_000_000


def test_model_init_depends_on_seed_only_and_leaves_global_rng_alone(tmp_path):
    cfg = micro_cfg(tmp_path)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = create_clip(cfg, 32, CPU, seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    b = create_clip(cfg, 32, CPU, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_resize_for_stage_resamples_positional_embeddings_and_keeps_the_rest(tmp_path):
    cfg = micro_cfg(tmp_path)
    small = create_clip(cfg, 32, CPU)
    large = resize_for_stage(small, cfg, 64, CPU)
    assert large.visual.positional_embedding.shape == (1 + 8 * 8, 64)
    assert torch.equal(large.visual.positional_embedding[0], small.visual.positional_embedding[0])
    for name, value in small.state_dict().items():
        if name != "visual.positional_embedding":
            assert torch.equal(value, large.state_dict()[name]), name


def test_inline_config_under_a_taken_name_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="model.name"):
        register_inline(ClipModelConfig(name="ViT-B-32", inline=MICRO), str(tmp_path))


def test_export_loads_with_open_clip_by_name_and_by_local_dir(tmp_path):
    cfg = micro_cfg(tmp_path)
    model = create_clip(cfg, 32, CPU, seed=1).eval()
    export_dir = str(tmp_path / "export")
    card = {
        "model": cfg.name,
        "data": "shards/train-*.tar",
        "strategy": "mix",
        "p": 0.25,
        "command": "recap run x",
        "budget": {"steps": 3, "samples_seen": 12, "global_batch": [4]},
    }
    weights = export_model(model, cfg, 32, export_dir, card=card)
    # open_clip's hub layout (push_to_hf_hub): safetensors weights, {model_cfg, preprocess_cfg} config, model card
    assert os.path.basename(weights) == open_clip.constants.HF_SAFE_WEIGHTS_NAME
    assert set(load_file(weights)) == set(model.state_dict())
    with open(os.path.join(export_dir, open_clip.constants.HF_CONFIG_NAME)) as handle:
        config = json.load(handle)
    assert config["model_cfg"] == resolved_model_config(cfg, 32) and config["preprocess_cfg"]["size"] == [32, 32]
    readme = open(os.path.join(export_dir, "README.md"), encoding="utf-8").read()
    assert (
        "p = 0.25" in readme and "shards/train-*.tar" in readme and '"steps": 3' in readme and "recap run x" in readme
    )
    image, text = torch.randn(2, 3, 32, 32), create_tokenizer(cfg)(["one", "two"])
    by_name, _, preprocess = open_clip.create_model_and_transforms(cfg.name, pretrained=weights)
    by_dir = load_exported(export_dir)
    with torch.no_grad():
        expected = model.encode_image(image)
        assert torch.allclose(by_name.eval().encode_image(image), expected)
        assert torch.allclose(by_dir.eval().encode_image(image), expected)
        assert torch.allclose(by_dir.encode_text(text), model.encode_text(text))
