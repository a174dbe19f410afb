"""towers.pretrained: specs, locks (after real AdamW steps), a tiny LiT step on real images, export/reload."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Tuple

import open_clip
import pytest
import torch
from conftest import require_real
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

import train_clip.models  # noqa: F401  (registers train_clip/model_configs with open_clip)
from harness_infra.errors import ConfigError
from towers.fid_inception import create_fid_trunk
from towers.minilm import loadable_config
from towers.pretrained import (
    SHIPPED_MODEL,
    StatsFrozenBatchNormAct2d,
    TowerSpec,
    apply_locks,
    create_tower_model,
    tower_model_config,
    tower_tokenizer,
    trainable_parameter_names,
)

CONFIG_DIR = Path(train_clip.__file__).parent / "model_configs"
SMALL = dict(image_size=75, embed_dim=32, context_length=16)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """A session cache folder for converted weights and generated model configs."""
    return str(tmp_path_factory.mktemp("pretrained-cache"))


def flickr_batch(data_root: str, n: int) -> Tuple[List[str], List[str]]:
    """n real Flickr8k image paths with their first caption (skips when the real data is absent)."""
    folder = os.path.join(data_root, "flickr8k")
    require_real(os.path.join(folder, "images"))
    captions: Dict[str, str] = {}
    with open(os.path.join(folder, "Flickr8k.token.txt"), encoding="utf-8") as handle:
        for line in handle:
            key, text = line.rstrip("\n").split("\t")
            image = key.split("#")[0]
            if os.path.isfile(os.path.join(folder, "images", image)):
                captions.setdefault(image, text)
            if len(captions) == n:
                break
    return [os.path.join(folder, "images", k) for k in captions], list(captions.values())


def preprocess(model: torch.nn.Module, paths: List[str]) -> torch.Tensor:
    """The model's own open_clip eval preprocessing of image files."""
    transform = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    return torch.stack([transform(Image.open(p)) for p in paths])


def clip_loss(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's contrastive loss of one batch."""
    image_features, text_features, logit_scale = model(images, tokens)[:3]
    return open_clip.ClipLoss()(image_features, text_features, logit_scale)


def random_tokens(n: int, length: int) -> torch.Tensor:
    """Random BERT token ids with [CLS] first and padding after a random length."""
    tokens = torch.randint(1000, 30000, (n, length))
    tokens[:, 0] = 101
    for i in range(n):
        tokens[i, 4 + i :] = 0
    return tokens


def test_shipped_config_is_the_default_spec():
    with open(CONFIG_DIR / f"{SHIPPED_MODEL}.json", encoding="utf-8") as handle:
        assert json.load(handle) == tower_model_config(TowerSpec())
    # in this process open_clip's registry loads its MiniLM from the wheel's folder; the file keeps the hub id
    assert open_clip.get_model_config(SHIPPED_MODEL) == loadable_config(tower_model_config(TowerSpec()))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_pretrained="fid_inception", image_timm_model="resnet50"), "needs image_timm_model"),
        (dict(image_pretrained="/no/such/file.pt"), "image_pretrained"),
        (dict(text_pooler="avg"), "text_pooler"),
        (dict(lock_image=False, image_unlocked_groups=2), "need lock_image=true"),
        (dict(text_unlock_norms=True), "need lock_text=true"),
    ],
)
def test_bad_specs_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TowerSpec(**kwargs)


def test_a_name_registered_with_another_config_is_refused(cache_dir):
    with pytest.raises(ConfigError, match="registered with another config"):
        create_tower_model(SHIPPED_MODEL, TowerSpec(embed_dim=64), cache_dir=cache_dir)


@pytest.mark.parametrize(
    "name, spec",
    [
        (
            "RecapLiT-test-partial",
            TowerSpec(image_pretrained=None, image_unlocked_groups=1, lock_text=True, text_unlocked_layers=1, **SMALL),
        ),
        (
            "RecapLiT-test-norms",
            TowerSpec(image_pretrained=None, image_unlock_norms=True, lock_text=True, text_unlock_norms=True, **SMALL),
        ),
    ],
    ids=["last-groups-unlocked", "norms-unlocked"],
)
def test_locked_parameters_and_statistics_survive_adamw_steps(cache_dir, name, spec):
    model = create_tower_model(name, spec, cache_dir=cache_dir).train()
    trainable = set(trainable_parameter_names(model))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-2, weight_decay=0.1
    )  # every parameter, as a careless trainer
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        images = torch.randn(4, 3, spec.image_size, spec.image_size, generator=generator)
        clip_loss(model, images, random_tokens(4, spec.context_length)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    after = model.state_dict()
    params = dict(model.named_parameters())
    assert {"logit_scale", "text.proj.weight", "visual.head.proj.weight"} <= trainable
    assert all(not torch.equal(before[k], after[k]) for k in trainable), "a trainable parameter did not move"
    assert all(torch.equal(before[k], after[k]) for k in params if k not in trainable), "a locked parameter moved"
    locked_bn = [n for n, m in model.visual.trunk.named_modules() if isinstance(m, StatsFrozenBatchNormAct2d)]
    assert locked_bn and all(not model.visual.trunk.get_submodule(n).training for n in locked_bn)
    for n in locked_bn:
        key = f"visual.trunk.{n}"
        assert torch.equal(before[f"{key}.running_mean"], after[f"{key}.running_mean"])
        assert torch.equal(before[f"{key}.running_var"], after[f"{key}.running_var"])
    text_layers = {
        k.split(".")[4] for k in trainable if k.startswith("text.transformer.encoder.layer.") and "LayerNorm" not in k
    }
    if (
        spec.image_unlocked_groups
    ):  # Mixed_7c trains, its BatchNorm statistics too; layer 5 is the one text layer unlocked
        assert {n.split(".")[0] for n in locked_bn} == {
            "Conv2d_1a_3x3",
            "Conv2d_2a_3x3",
            "Conv2d_2b_3x3",
            "Conv2d_3b_1x1",
            "Conv2d_4a_3x3",
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6b",
            "Mixed_6c",
            "Mixed_6d",
            "Mixed_6e",
            "Mixed_7a",
            "Mixed_7b",
        }
        assert not torch.equal(
            before["visual.trunk.Mixed_7c.branch1x1.bn.running_mean"],
            after["visual.trunk.Mixed_7c.branch1x1.bn.running_mean"],
        )
        assert text_layers == {"5"}
        assert not any("LayerNorm" in k for k in trainable if k.startswith("text.transformer.encoder.layer.0."))
    else:  # whole trunk locked, BatchNorm affine and text LayerNorms trainable
        assert len(locked_bn) == 94 and "visual.trunk.Mixed_5b.branch1x1.bn.weight" in trainable
        assert not text_layers and "text.transformer.embeddings.LayerNorm.weight" in trainable


def test_locked_batchnorm_keeps_outputs_of_the_unlocked_model(cache_dir):
    """Freezing statistics changes nothing in eval, and train mode then computes the same features as eval."""
    spec = TowerSpec(image_pretrained=None, **SMALL)
    model = create_tower_model(
        "RecapLiT-test-bn", TowerSpec(image_pretrained=None, lock_image=False, **SMALL), cache_dir=cache_dir
    ).eval()
    images = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        reference = model.visual.trunk(images)
        apply_locks(model, spec)
        model.train()
        assert torch.equal(model.visual.trunk(images), reference)


def test_tiny_lit_step_on_real_images(data_root, cache_dir):
    """FID Inception locked, MiniLM trained: the loss on a real batch falls and only trainable tensors get gradients."""
    paths, captions = flickr_batch(data_root, 4)
    spec = TowerSpec(image_size=96, embed_dim=64, context_length=32)
    model = create_tower_model("RecapLiT-test-tiny", spec, cache_dir=cache_dir).train()
    images, tokens = preprocess(model, paths), tower_tokenizer("RecapLiT-test-tiny", spec)(captions)
    with torch.no_grad():
        assert torch.allclose(model.visual.trunk(images), create_fid_trunk(cache_dir=cache_dir)(images), atol=1e-5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        loss = clip_loss(model, images, tokens)
        loss.backward()
        grads = {n for n, p in model.named_parameters() if p.grad is not None}
        assert grads == set(trainable_parameter_names(model)) and not any(n.startswith("visual.trunk.") for n in grads)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses


def exported_outputs_match(
    model: torch.nn.Module, name: str, path: Path, images: torch.Tensor, tokens: torch.Tensor
) -> None:
    """Save the state dict, reload it the way open_clip users do, and compare both models' outputs bitwise."""
    torch.save({"state_dict": model.state_dict()}, path)
    reloaded, _, preprocess_val = open_clip.create_model_and_transforms(name, pretrained=str(path))
    # open_clip returns the model in train mode: compare both in eval mode
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        for a, b in (
            (model.encode_image(images), reloaded.encode_image(images)),
            (model.encode_text(tokens), reloaded.encode_text(tokens)),
        ):
            assert torch.equal(a, b)
    normalize = preprocess_val.transforms[-1]
    assert tuple(normalize.mean) == tuple(
        open_clip.OPENAI_DATASET_MEAN
    )  # the folded FID tower takes open_clip's defaults


def test_trained_tower_model_reloads_with_create_model_and_transforms(tmp_path, cache_dir):
    spec = TowerSpec(image_unlocked_groups=1, **SMALL)
    model = create_tower_model("RecapLiT-test-export", spec, cache_dir=cache_dir).train()
    images, tokens = torch.randn(2, 3, 75, 75), random_tokens(2, 16)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    clip_loss(model, images, tokens).backward()
    optimizer.step()
    exported_outputs_match(model, "RecapLiT-test-export", tmp_path / "model.pt", images, tokens)


def test_shipped_config_checkpoint_reloads(tmp_path, data_root, cache_dir):
    """The shipped RecapLiT-inception-minilm: export -> create_model_and_transforms(name, pretrained=FILE) on real images."""
    open_clip.add_model_config(CONFIG_DIR)
    paths, captions = flickr_batch(data_root, 2)
    model = create_tower_model(SHIPPED_MODEL, TowerSpec(), cache_dir=cache_dir)
    tokens = open_clip.get_tokenizer(SHIPPED_MODEL)(captions)
    exported_outputs_match(
        model, SHIPPED_MODEL, tmp_path / "open_clip_pytorch_model.bin", preprocess(model, paths), tokens
    )
