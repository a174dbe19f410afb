"""The DiT family: it learns, its EMA is the documented update, caption dropout has its rate, resume is exact, a
diverged step stops the run, the caption draw is CLIP's, sampling depends on the seed only, exports load with
diffusers' from_pretrained, and bad config values fail in one line."""

from __future__ import annotations

import io
import json
import math
import os
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest
import torch
from PIL import Image

from captiondata.builders.scenes import scene_records
from captiondata.config import DataConfig, MixConfig
from captiondata.writer import ShardWriter
from harness_infra.errors import ConfigError
from train_dit.config import DitModelConfig, DitTrainConfig, ImageSpaceSpec, SampleSpec
from train_dit.image import tiny_vae_config
from train_dit.text import TextEncoder
from training.generation import GenerationSpec, generate_batches

MICRO = dict(name="DiT-micro", preset="DiT-micro", image_size=32)


class ColourBatches:
    """CaptionLoader's contract in memory: solid-colour 32 px images captioned with their colour name; epoch order a
    function of (seed, epoch); rank r takes every world_size-th sample. ``poison_step``: that batch's images are NaN."""

    COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.1, 0.2, 1.0), "yellow": (0.95, 0.9, 0.1)}

    def __init__(
        self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, poison_batch: int = -1
    ) -> None:
        names = list(self.COLOURS)
        self.keys = [f"c{i:04d}" for i in range(n)]
        self.texts = [names[i % len(names)] for i in range(n)]
        self.images = torch.stack([torch.tensor(self.COLOURS[t]).view(3, 1, 1).expand(3, 32, 32) for t in self.texts])
        self.batch_size, self.rank, self.world_size, self.seed, self.poison = (
            batch_size,
            rank,
            world_size,
            seed,
            poison_batch,
        )
        self.epoch, self.served = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.served = epoch, 0

    def __len__(self) -> int:
        return len(self.keys) // self.world_size // self.batch_size

    def iterate(self, skip_batches: int = 0) -> Iterator[Dict[str, Any]]:
        order = torch.randperm(len(self.keys), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))[
            self.rank :: self.world_size
        ]
        for index in range(skip_batches, len(self)):
            rows = order[index * self.batch_size : (index + 1) * self.batch_size].tolist()
            self.served += len(rows)
            images = self.images[rows].clone()
            if self.epoch * len(self) + index == self.poison:
                images[:] = float("nan")
            yield {"image": images, "text": [self.texts[r] for r in rows], "key": [self.keys[r] for r in rows]}

    def epoch_stats(self) -> Dict[str, Any]:
        return {"samples": self.served, "skipped_total": 0, "skipped": {}, "original_fraction": None}


def colour_factory(n: int = 64, **kwargs: Any):
    """A source factory for ``train_dit.train.train``."""
    return lambda session: ColourBatches(
        n, session.train_cfg.batch_size, session.env.rank, session.env.world_size, **kwargs
    )


def recipe(**overrides: Any) -> DitTrainConfig:
    """A CPU recipe for tests: no TensorBoard, no progress bar, deterministic kernels."""
    base = dict(
        samples=64,
        batch_size=16,
        lr=1e-3,
        device="cpu",
        tensorboard=False,
        progress_bar=False,
        deterministic=True,
        log_every=1,
        features=False,
        resume="latest",
    )
    return DitTrainConfig(**{**base, **overrides})


def metrics(out_dir: str) -> List[Dict[str, Any]]:
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def checkpoint(out_dir: str, step: int) -> Dict[str, Any]:
    path = os.path.join(out_dir, "checkpoints", f"step_{step:08d}.pt")
    return torch.load(path, map_location="cpu", weights_only=True)


def scene_split_shards(tmp_path_factory, split: str, n: int) -> str:
    """The first ``n`` scenes of ``split`` (original + recaption each) in shards of 16; their shard spec."""
    folder = tmp_path_factory.mktemp(f"scene_{split}_shards")
    writer = ShardWriter(str(folder), split, max_count=16)
    writer.write_all(list(scene_records(split, n)))
    writer.close()
    return str(folder / f"{split}-*.tar")


@pytest.fixture(scope="module")
def scene_shards(tmp_path_factory) -> str:
    """48 training scenes in 3 shards."""
    return scene_split_shards(tmp_path_factory, "train", 48)


@pytest.fixture(scope="module")
def scene_val_shards(tmp_path_factory) -> str:
    """8 validation scenes in one shard."""
    return scene_split_shards(tmp_path_factory, "val", 8)


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory) -> str:
    """A DiT-micro trained 4 steps on colours, exported (its scheduler/ is DDPM's, the paper's sampler)."""
    from train_dit.train import train

    out = str(tmp_path_factory.mktemp("dit_export"))
    train(
        DitModelConfig(**MICRO),
        recipe(samples=64, sample=SampleSpec(sampler="ddpm")),
        None,
        None,
        out,
        source_factory=colour_factory(),
    )
    return os.path.join(out, "export")


# --- it learns -------------------------------------------------------------------------------------------------


def test_loss_falls_on_a_tiny_config(tmp_path):
    from train_dit.train import train

    result = train(
        DitModelConfig(**MICRO),
        recipe(samples=16 * 30, lr=2e-3, caption_dropout=0.0),
        None,
        None,
        str(tmp_path),
        source_factory=colour_factory(64),
    )
    losses = [m["loss"] for m in metrics(str(tmp_path))]
    assert len(losses) == 30 and result.steps == 30
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    # predicting zero noise scores 1.0 (the epsilon loss's variance); a model that learned the colours goes well below
    assert first > 0.9 and last < 0.8 and last < 0.7 * first, (first, last)


# --- EMA -------------------------------------------------------------------------------------------------------


def test_ema_equals_the_hand_computed_update(tmp_path):
    """ema_n = d_n ema_(n-1) + (1 - d_n) theta_n with d_n = min(decay, 1 - (1 + (n - 1) / inv_gamma)^-power), d_1 = 0."""
    from train_dit.train import train

    cfg = recipe(
        samples=48,
        checkpoint_every_steps=1,
        keep_checkpoints=5,
        ema_decay=0.9,
        ema_warmup=True,
        ema_inv_gamma=1.0,
        ema_power=0.75,
    )
    train(DitModelConfig(**MICRO), cfg, None, None, str(tmp_path), source_factory=colour_factory())
    names = [n for n, _ in torch.nn.Module.named_parameters(_bare_model())]
    expected = None
    for step in (1, 2, 3):
        payload = checkpoint(str(tmp_path), step)
        theta = [payload["model"][n] for n in names]
        decay = 0.0 if step == 1 else min(0.9, 1 - (1 + (step - 1) / 1.0) ** -0.75)
        expected = (
            [t.clone() for t in theta]
            if expected is None
            else [decay * e + (1 - decay) * t for e, t in zip(expected, theta)]
        )
        shadow = payload["ema"]["shadow_params"]
        assert payload["ema"]["optimization_step"] == step
        for e, s in zip(expected, shadow):
            torch.testing.assert_close(s, e, rtol=0, atol=1e-6)
    assert not torch.equal(shadow[0], theta[0])  # the average lags the weights


def _bare_model() -> torch.nn.Module:
    """A DiT-micro with the trainer's shapes (parameter names and order)."""
    from train_dit.model import build_transformer

    return build_transformer(DitModelConfig(**MICRO), 3, 32, 384)


# --- caption dropout -------------------------------------------------------------------------------------------


def test_caption_dropout_rate_lies_in_a_binomial_interval():
    from train_dit.train import prepare_batch, sample_generators

    null = (torch.full((2, 4), -7.0), torch.ones(2, dtype=torch.long))
    session = SimpleNamespace(
        train_cfg=DitTrainConfig(caption_dropout=0.1, flip=True),
        env=SimpleNamespace(device=torch.device("cpu")),
        null=null,
    )
    n, dropped, flips = 0, 0, 0
    for step in range(50):
        keys = [f"k{i}" for i in range(80)]
        views = torch.stack(
            [torch.zeros(80, 1, 1, 1), torch.ones(80, 1, 1, 1)], dim=1
        )  # view 0 = zeros, view 1 (flipped) = ones
        batch = {"x0": views, "text_rows": [torch.ones(3, 4)] * 80, "key": keys}
        x0, text, mask = prepare_batch(session, batch, sample_generators(0, step, keys))
        dropped += int((text[:, 0, 0] == -7.0).sum())
        flips += int(x0.flatten(1)[:, 0].sum())
        n += 80
    half_width = 3.29 * math.sqrt(0.1 * 0.9 / n)  # 99.9% normal interval of a binomial proportion
    assert abs(dropped / n - 0.1) < half_width, dropped / n
    assert abs(flips / n - 0.5) < 3.29 * math.sqrt(0.25 / n), flips / n


# --- resume and divergence -------------------------------------------------------------------------------------


def test_resume_after_a_crash_is_bitwise_equal(tmp_path):
    from train_dit.train import train

    model = DitModelConfig(**MICRO)
    straight, crashed = str(tmp_path / "straight"), str(tmp_path / "crashed")
    uninterrupted = train(
        model, recipe(samples=16 * 8, checkpoint_every_steps=2), None, None, straight, source_factory=colour_factory(48)
    )
    with pytest.raises(RuntimeError):  # a NaN batch at step 6: the run stops after the step-4 checkpoint
        train(
            model,
            recipe(samples=16 * 8, checkpoint_every_steps=2),
            None,
            None,
            crashed,
            source_factory=colour_factory(48, poison_batch=5),
        )
    resumed = train(
        model, recipe(samples=16 * 8, checkpoint_every_steps=2), None, None, crashed, source_factory=colour_factory(48)
    )
    assert uninterrupted.resumed == [] and [r["from_step"] for r in resumed.resumed] == [4]
    assert checkpoint(crashed, 8)["resumed"] == resumed.resumed  # stored, so a later resume adds to it
    a, b = checkpoint(straight, 8), checkpoint(crashed, 8)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]))
    assert a["position"] == b["position"] and a["ema"]["optimization_step"] == 8


def test_a_non_finite_loss_stops_the_run_at_its_step_keeping_the_last_good_checkpoint(tmp_path):
    from harness_infra.errors import BrokenModelError
    from train_dit.train import train

    with pytest.raises(BrokenModelError, match=r"the loss is (nan|inf) at step 6 .*step_00000004\.pt") as caught:
        train(
            DitModelConfig(**MICRO),
            recipe(samples=16 * 8, checkpoint_every_steps=2, keep_checkpoints=5),
            None,
            None,
            str(tmp_path),
            source_factory=colour_factory(48, poison_batch=5),
        )
    assert "\n" not in str(caught.value)
    saved = sorted(os.listdir(tmp_path / "checkpoints"))
    assert saved == ["step_00000002.pt", "step_00000004.pt"]
    assert all(torch.isfinite(v).all() for v in checkpoint(str(tmp_path), 4)["model"].values())


# --- validation ------------------------------------------------------------------------------------------------


def test_validation_logs_every_interval_and_leaves_the_run_bitwise_unchanged(tmp_path, scene_shards, scene_val_shards):
    """The EMA weights' held-out x0 errors at steps 3 and 4 (the last), per caption source and level; the trained
    weights, the EMA and the optimizer end bitwise equal to the same run without validation."""
    from train_dit.train import train

    data = DataConfig(
        builder="none", train_shards=scene_shards, val_shards=scene_val_shards, num_workers=0, shuffle_buffer=8
    )
    plain = dict(samples=16 * 4, scheduler="flow", sample=SampleSpec(sampler="euler"), checkpoint_every_steps=4)
    train(DitModelConfig(**MICRO), recipe(**plain), data, MixConfig(p=0.5), str(tmp_path / "plain"))
    result = train(
        DitModelConfig(**MICRO),
        recipe(**plain, val_every_steps=3, val_samples=6, val_levels=[0.5, 0.9]),
        data,
        MixConfig(p=0.5),
        str(tmp_path / "validated"),
    )
    a, b = checkpoint(str(tmp_path / "plain"), 4), checkpoint(str(tmp_path / "validated"), 4)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]))
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
    with open(tmp_path / "validated" / "validation.jsonl", encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle]
    assert [line["step"] for line in lines] == [3, 4]
    names = {"original", "recap", "original@0.5", "original@0.9", "recap@0.5", "recap@0.9"}
    assert all(names <= set(line) and all(0 < line[n] < 10 for n in names) for line in lines)
    assert lines[-1]["recap"] == pytest.approx((lines[-1]["recap@0.5"] + lines[-1]["recap@0.9"]) / 2)
    assert result.validation == {k: v for k, v in lines[-1].items() if k in names}
    from train_dit.validation import export_errors  # the CLI's path: the export's EMA weights, reloaded, give the same

    again = export_errors(result.export_dir, data, 6, [0.5, 0.9])
    assert again.keys() == result.validation.keys() and all(
        again[k] == pytest.approx(result.validation[k], rel=1e-5) for k in again
    )


class Zero(torch.nn.Module):
    """A 'transformer' that outputs zeros of its input's shape (the x0 error then has a closed form)."""

    def forward(self, x: torch.Tensor, **_: Any) -> tuple:
        return (torch.zeros_like(x),)


@pytest.mark.parametrize("scheduler, prediction", [("flow", "velocity"), ("flow", "sample"), ("ddpm", "epsilon")])
def test_the_x0_error_of_a_zero_output_has_its_closed_form(scheduler, prediction):
    """A zero output means x0 = x_t for a velocity model, x0 = 0 for an x0 model and x0 = x_t / sqrt(abar_t) for an
    epsilon model, so the error at level l is l^2 |noise - x0|^2, |x0|^2 and (1 - abar) / abar |noise|^2 (means)."""
    from train_dit.diffusion import training_scheduler
    from train_dit.validation import HeldOut, denoising_errors

    cfg = DitTrainConfig(
        scheduler=scheduler,
        prediction=prediction,
        val_levels=[0.3, 0.8],
        sample=SampleSpec(sampler="euler" if scheduler == "flow" else "ddpm"),
    )
    gen = torch.Generator().manual_seed(5)
    x0, noise = torch.rand(10, 3, 4, 4, generator=gen) * 2 - 1, torch.randn(10, 3, 4, 4, generator=gen)
    held = HeldOut(x0, noise, {"recap": (torch.zeros(10, 3, 8), torch.ones(10, 3))})
    model = Zero().train()
    errors = denoising_errors(model, held, cfg, training_scheduler(cfg), batch_size=4)
    assert model.training  # its mode is given back
    for level in (0.3, 0.8):
        if prediction == "velocity":
            expected = level**2 * (noise - x0).pow(2).mean()
        elif prediction == "sample":
            expected = x0.pow(2).mean()
        else:
            abar = training_scheduler(cfg).alphas_cumprod[round(level * 999)]
            expected = (1 - abar) / abar * noise.pow(2).mean()
        assert errors[f"recap@{level:g}"] == pytest.approx(float(expected), rel=1e-4)


class CaptionLookup(torch.nn.Module):
    """An x0 'model' that reads a sample index from its caption features (feature 0 = index + 1) and outputs that
    sample's clean image, or zeros for a caption that names no sample (the empty caption)."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, x: torch.Tensor, encoder_hidden_states: torch.Tensor, **_: Any) -> tuple:
        index = encoder_hidden_states[:, 0, 0].round().long() - 1
        out = torch.zeros_like(x)
        out[index >= 0] = self.x0[index[index >= 0]]
        return (out,)


class ZeroText:
    """A text encoder whose every caption is one zero token."""

    def encode(self, lines):
        return torch.zeros(len(lines), 1, 4), torch.ones(len(lines), 1, dtype=torch.long)


def test_text_controls_give_each_sample_another_caption_and_the_empty_one():
    """With a model that draws exactly the sample its caption names: its own captions give 0, each other's the mean
    squared distance to the next sample, the empty caption the mean squared image (its output is zero)."""
    from train_dit.validation import HeldOut, denoising_errors, with_text_controls

    gen = torch.Generator().manual_seed(2)
    x0, noise = torch.rand(5, 3, 4, 4, generator=gen) * 2 - 1, torch.randn(5, 3, 4, 4, generator=gen)
    features = torch.zeros(5, 1, 4)
    features[:, 0, 0] = torch.arange(1, 6, dtype=torch.float32)
    held = with_text_controls(HeldOut(x0, noise, {"recap": (features, torch.ones(5, 1, dtype=torch.long))}), ZeroText())
    assert set(held.texts) == {"recap", "recap_other", "empty"}
    cfg = DitTrainConfig(
        scheduler="flow", prediction="sample", val_levels=[0.5, 0.9], sample=SampleSpec(sampler="euler")
    )
    errors = denoising_errors(CaptionLookup(x0), held, cfg, None, batch_size=2)
    swapped = sum(float((x0[(i + 1) % 5] - x0[i]).pow(2).mean()) for i in range(5)) / 5
    assert errors["recap"] == 0.0 and errors["recap_other"] == pytest.approx(swapped, rel=1e-6)
    assert errors["empty"] == pytest.approx(float(x0.pow(2).mean()), rel=1e-6)
    with pytest.raises(ConfigError, match="at least 2 held-out samples"):
        with_text_controls(HeldOut(x0[:1], noise[:1], {"recap": (features[:1], torch.ones(1, 1))}), ZeroText())


def test_validation_without_a_val_split_fails_in_one_line(tmp_path, scene_shards):
    from train_dit.train import train

    data = DataConfig(builder="none", train_shards=scene_shards, num_workers=0, shuffle_buffer=8)
    with pytest.raises(ConfigError) as caught:
        train(DitModelConfig(**MICRO), recipe(samples=16, val_every_steps=1), data, MixConfig(p=0.5), str(tmp_path))
    assert str(caught.value).startswith("train.val_every_steps > 0 needs a val split") and "\n" not in str(caught.value)


# --- the caption mixer -----------------------------------------------------------------------------------------


def test_cached_features_follow_the_same_caption_draw_as_clip(tmp_path, scene_shards):
    """DiT's feature loader and CLIP's loader emit the same caption per (key, epoch), the mixer's; the features served
    are the text encoder's features of that caption."""
    from captiondata.loader import CaptionLoader
    from train_clip.data import LoaderRequest, caption_loader_factory
    from train_dit.features import FeatureBatches, ensure_features
    from train_dit.image import ImageSpace

    data = DataConfig(builder="none", train_shards=scene_shards, num_workers=0, shuffle_buffer=8)
    mix = MixConfig(p=0.2, seed=3)  # 0.2, not 0.5: the share of originals must tell p from 1 - p
    text = TextEncoder(DitModelConfig().text_encoder)
    store = ensure_features(data, mix, text, ImageSpace(ImageSpaceSpec()), 32, True, str(tmp_path / "cache"), 16)
    assert store.images.features.shape == (48, 2, 3, 32, 32) and len(store.index) == 96
    dit = FeatureBatches(
        CaptionLoader(data, mix, tokenize=None, batch_size=8, seed=5, image_features=store.images), store
    )
    clip = caption_loader_factory(data, mix)(LoaderRequest(0, 32, lambda im: torch.zeros(1), list, 8, 0, 1, 5))
    originals = {r.key: r for r in scene_records("train", 48)}
    trained_originals = 0
    for epoch in (0, 1):
        dit.set_epoch(epoch)
        clip.set_epoch(epoch)
        ours = {k: (t, rows) for b in dit.iterate() for k, t, rows in zip(b["key"], b["text"], b["text_rows"])}
        theirs = {k: t for b in clip.iterate() for k, t in zip(b["key"], b["text"])}
        assert len(ours) == 48 and {k: v[0] for k, v in ours.items()} == theirs
        assert all(
            caption in [originals[key].original] + originals[key].recaptions for key, (caption, _) in ours.items()
        )
        epoch_originals = sum(caption == originals[key].original for key, (caption, _) in ours.items())
        assert dit.epoch_stats()["original_fraction"] == pytest.approx(epoch_originals / 48)  # a hand count
        trained_originals += epoch_originals
        for key, (caption, rows) in list(ours.items())[:6]:
            features, mask = text.encode([caption])
            torch.testing.assert_close(rows, features[0, : int(mask.sum())], atol=2e-3, rtol=2e-3)  # stored as float16
    # 96 draws of P(original) = 0.2: a 99.9% binomial bound of +-0.134 that excludes 0.8 (and 0.5)
    assert abs(trained_originals / 96 - 0.2) <= 3.2905 * (0.2 * 0.8 / 96) ** 0.5, trained_originals


# --- sampling and export ---------------------------------------------------------------------------------------


def sample_all(pipe: Any, prompts: List[str], spec: GenerationSpec) -> torch.Tensor:
    """Every image of ``prompts`` through the one generation loop."""
    return torch.cat([images for _, images in generate_batches(pipe.generate, prompts, spec, show=False)])


def test_sampling_depends_on_prompt_and_seed_only(trained_export):
    import dataclasses

    from train_dit.sample import DitPipeline

    pipe = DitPipeline.from_pretrained(trained_export)
    prompts = ["red", "a large blue dotted square at the top left", "green", "yellow"]
    for sampler, steps in (("ddpm", 8), ("dpm++", 5)):
        spec = GenerationSpec(guidance_scale=10.0, steps=steps, sampler=sampler, seed=10, batch_size=4)
        four = sample_all(pipe, prompts, spec)  # seeds 10..13
        ones = sample_all(pipe, prompts, dataclasses.replace(spec, batch_size=1))
        again = pipe.generate(prompts[2:3], [12], spec)
        other = pipe.generate(prompts[2:3], [99], spec)
        assert four.shape == (4, 3, 32, 32) and torch.equal(four, ones) and torch.equal(four[2:3], again)
        assert not torch.equal(again, other)
    # whole batches: the same images up to float rounding
    batched = sample_all(
        pipe,
        prompts,
        GenerationSpec(guidance_scale=10.0, steps=5, sampler="dpm++", seed=10, batch_size=4, batch_invariant=False),
    )
    assert (batched - four).abs().max() < 1e-4


def test_export_loads_with_from_pretrained(trained_export):
    from diffusers import DDPMScheduler, PixArtTransformer2DModel

    run_dir = os.path.dirname(trained_export)
    last = checkpoint(run_dir, 4)
    ema = PixArtTransformer2DModel.from_pretrained(os.path.join(trained_export, "transformer"))
    online = PixArtTransformer2DModel.from_pretrained(os.path.join(trained_export, "transformer_online"))
    assert all(torch.equal(p, s) for p, s in zip(ema.parameters(), last["ema"]["shadow_params"]))
    assert all(torch.equal(online.state_dict()[k], v) for k, v in last["model"].items())
    scheduler = DDPMScheduler.from_pretrained(os.path.join(trained_export, "scheduler"))
    assert scheduler.config.num_train_timesteps == 1000 and scheduler.config.beta_schedule == "linear"
    assert scheduler.config.beta_start == 1e-4 and scheduler.config.beta_end == 0.02
    assert (
        scheduler.config.clip_sample
    )  # scheduler/ samples (pixel space: x0 kept in [-1, 1]); train_scheduler/ trained
    assert not DDPMScheduler.from_pretrained(os.path.join(trained_export, "train_scheduler")).config.clip_sample
    with open(os.path.join(trained_export, "dit_pipeline.json"), encoding="utf-8") as handle:
        described = json.load(handle)
    assert (
        described["text_encoder"]["name"] == "minilm"
        and described["latent"] == [3, 32, 32]
        and described["prediction"] == "epsilon"
    )


def test_latent_space_with_a_random_autoencoder_trains_exports_and_samples(tmp_path, scene_shards):
    """The VAE path: 64 px scenes -> 8x8x4 latents of a random-weight AutoencoderKL (x 0.18215), patch 2 -> 16 tokens;
    cached features, flow matching with x0 prediction (JiT); the export carries the autoencoder and its prediction
    type and samples 64 px images."""
    from train_dit.sample import DitPipeline
    from train_dit.train import train

    model = DitModelConfig(
        name="DiT-vae",
        preset="DiT-micro",
        image_size=64,
        patch_size=2,
        image_space=ImageSpaceSpec(kind="vae", config=tiny_vae_config()),
    )
    data = DataConfig(builder="none", train_shards=scene_shards, num_workers=0, shuffle_buffer=8)
    cfg = recipe(
        samples=32,
        features=True,
        scheduler="flow",
        prediction="sample",
        sample=SampleSpec(sampler="euler"),
        feature_cache_dir=str(tmp_path / "cache"),
    )
    result = train(model, cfg, data, MixConfig(p=0.5), str(tmp_path / "run"))
    assert result.steps == 2 and math.isfinite(result.final_loss)
    pipe = DitPipeline.from_pretrained(result.export_dir)
    assert pipe.space.scaling_factor == pytest.approx(0.18215) and pipe.latent_shape() == [4, 8, 8]
    assert pipe.description["prediction"] == "sample"
    described = os.path.join(result.export_dir, "dit_pipeline.json")
    with open(described, encoding="utf-8") as handle:
        payload = json.load(handle)
    with open(described, "w", encoding="utf-8") as handle:  # an export whose prediction its scheduler cannot have
        json.dump({**payload, "prediction": "epsilon"}, handle)
    with pytest.raises(
        ConfigError,
        match="prediction='epsilon', which does not fit its flow scheduler; expected one of velocity, sample",
    ):
        DitPipeline.from_pretrained(result.export_dir)
    images = pipe.generate(["a red circle"], [0], GenerationSpec(guidance_scale=4.0, steps=3, sampler="euler"))
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()


def test_the_sample_cli_writes_what_the_pipeline_generates(tmp_path, trained_export, scene_val_shards, capsys):
    """``python -m train_dit.sample``: prompts alternate the first val scenes' original and recaption, image i is
    ``DitPipeline.generate`` with seed i bit for bit, a grid is drawn; an existing --out is refused in one line."""
    import numpy as np
    from PIL import Image

    from harness_infra.errors import cli_main
    from train_dit.sample import DitPipeline, main
    from training.generation import to_pil

    out = tmp_path / "samples"
    argv = [
        trained_export,
        "--shards",
        scene_val_shards,
        "--out",
        str(out),
        "--num-prompts",
        "3",
        "--steps",
        "3",
        "--sampler",
        "ddpm",
        "--guidance-scale",
        "2",
    ]
    main(argv)
    scenes = list(scene_records("val", 2))
    prompts = [scenes[0].original, scenes[0].recaptions[0], scenes[1].original]
    with open(out / "prompts.jsonl", encoding="utf-8") as handle:
        written = [json.loads(line) for line in handle]
    assert [w["prompt"] for w in written] == prompts and [w["seed"] for w in written] == [0, 1, 2]
    expected = DitPipeline.from_pretrained(trained_export).generate(
        prompts, [0, 1, 2], GenerationSpec(guidance_scale=2.0, steps=3, sampler="ddpm")
    )
    for index, image in enumerate(expected):
        assert np.array_equal(np.asarray(Image.open(out / "images" / f"{index:05d}.png")), np.asarray(to_pil(image)))
    assert (out / "grid.png").stat().st_size > 1000
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        cli_main(lambda: main(argv))
    err = capsys.readouterr().err.strip()
    assert caught.value.code == 2 and err == f"error: --out {out} exists; choose a new folder"


def test_training_samples_and_the_t2i_task_write_the_same_images(tmp_path, trained_export):
    """One spec, one model: the sample stage's writer (``write_samples``, on two ranks) and the T2I tasks' generation
    (``evals.tasks.t2i.generated_images``) write byte-identical PNGs, and each side file keeps its fields."""
    import dataclasses
    import glob

    from evals.tasks import t2i
    from evals.tasks.config import EvalConfig, task_config
    from evals.tasks.registry import ImageGenerator
    from train_dit.sample import DitPipeline, write_samples

    spec = GenerationSpec(guidance_scale=2.0, steps=3, sampler="dpm++", seed=5, batch_size=2)
    prompts = ["a red circle", "a large blue dotted square at the top left", "green"]
    pipe = DitPipeline.from_pretrained(trained_export)
    sample_dir = tmp_path / "sample"
    assert write_samples(pipe, prompts, str(sample_dir), spec, 0, 2, trained_export) == [0, 2]
    assert write_samples(pipe, prompts, str(sample_dir), spec, 1, 2, trained_export) == [1]
    task = task_config(name="t", task="fid", path="unused-*.tar", generation=dataclasses.asdict(spec))
    images = t2i.generated_images(
        ImageGenerator(pipe, weights_id="w"), prompts, task, EvalConfig(cache_dir=str(tmp_path / "eval"))
    )
    (folder,) = glob.glob(str(tmp_path / "eval" / t2i.IMAGES_DIR / "*"))
    for index, image in enumerate(images):
        ours = (sample_dir / "images" / f"{index:05d}.png").read_bytes()
        assert ours == open(os.path.join(folder, f"{index:05d}.png"), "rb").read()
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(ours))), np.asarray(image))
        shared = {
            "index": index,
            "prompt": prompts[index],
            "seed": 5 + index,
            "guidance_scale": 2.0,
            "steps": 3,
            "sampler": "dpm++",
            "batch_invariant": True,
        }
        sample_side = json.loads((sample_dir / "images" / f"{index:05d}.json").read_text())
        with open(os.path.join(folder, f"{index:05d}.json"), encoding="utf-8") as handle:
            eval_side = json.load(handle)
        assert sample_side == {**shared, "batch_size": 2, "export": trained_export}
        assert eval_side == {**shared, "generate_batch": 2, "generator": "w"}


def test_sampling_has_one_set_of_defaults():
    """The sample stage, the T2I tasks and the sample CLI all take training.generation.GenerationSpec's defaults (the
    committed scenes_t2i.md settings: DPM-Solver++ 25 steps at guidance 4, seed 0, batch 16, batch-invariant), and the
    samplers' own signatures carry none."""
    import dataclasses
    import inspect

    from evals.tasks.config import task_config
    from evals.tasks.registry import ImageGenerator
    from train_dit.sample import DitPipeline

    base = GenerationSpec()
    assert dataclasses.astuple(base) == (4.0, 25, "dpm++", 0, 16, True)
    names = [f.name for f in dataclasses.fields(GenerationSpec)]
    assert {n: getattr(SampleSpec(), n) for n in names} == dataclasses.asdict(base)
    assert (
        DitTrainConfig().sample.sampler == DitTrainConfig(scheduler="flow").sample.sampler == base.sampler
    )  # fits both objectives
    for kind in ("fid", "clip_score", "prompt_following", "vlm_judge"):
        extra = {"evaluator": "ViT-B-32:x"} if kind == "clip_score" else {}
        assert task_config(name="t", task=kind, path="x", **extra).generation == base
    for method in (DitPipeline.generate, ImageGenerator.generate):
        assert all(p.default is inspect.Parameter.empty for p in inspect.signature(method).parameters.values())


# --- samplers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "objective, sampler, steps",
    [("flow", "euler", 25), ("flow", "dpm++", 25), ("ddpm", "dpm++", 25), ("ddpm", "ddpm", 250)],
)
def test_every_sampler_lands_on_the_data_under_the_exact_model(objective, sampler, steps):
    """Data = one point c: the exact velocity is (x_t - c) / sigma (x_t = (1 - sigma) c + sigma eps, model timestep 1000
    sigma) and the exact epsilon (x_t - sqrt(abar_t) c) / sqrt(1 - abar_t). A sampler whose schedule or parameterisation
    does not match the training objective (DPM-Solver++ built from a flow config with DDPM's defaults) misses c."""
    from train_dit.diffusion import model_timestep, sampling_scheduler, training_scheduler

    trained = training_scheduler(
        DitTrainConfig(scheduler=objective, sample=SampleSpec(sampler="euler" if objective == "flow" else "ddpm"))
    )
    config = {**trained.config, "_class_name": type(trained).__name__}  # as exported by save_pretrained
    c = torch.tensor([0.3, -0.5, 0.8, 0.1]).view(1, 1, 2, 2)
    scheduler = sampling_scheduler(config, sampler)
    scheduler.set_timesteps(steps)
    x = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0)) * getattr(
        scheduler, "init_noise_sigma", 1.0
    )
    for index, t in enumerate(scheduler.timesteps):
        if objective == "flow":
            out = (x - c) / (model_timestep(scheduler, index, t) / 1000)  # the timestep the pipeline gives the model
        else:
            abar = trained.alphas_cumprod[int(t)]
            out = (x - abar.sqrt() * c) / (1 - abar).sqrt()
        x = scheduler.step(out, t, x, return_dict=False)[0]
    assert torch.allclose(x, c, atol=2e-3), (x - c).abs().max()


@pytest.mark.parametrize("sampler", ["euler", "dpm++"])
def test_an_x0_model_samples_through_its_exact_velocity(sampler):
    """prediction="sample": the exact x0 model of the point distribution c outputs c at every step; turned into a
    velocity with ``floor=0`` (as the pipeline does), both flow samplers land on c."""
    from train_dit.diffusion import model_timestep, sampling_scheduler, training_scheduler, velocity_from_sample

    trained = training_scheduler(
        DitTrainConfig(scheduler="flow", prediction="sample", sample=SampleSpec(sampler="euler"))
    )
    scheduler = sampling_scheduler({**trained.config, "_class_name": type(trained).__name__}, sampler)
    scheduler.set_timesteps(25)
    c = torch.tensor([0.3, -0.5, 0.8, 0.1]).view(1, 1, 2, 2)
    x = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for index, t in enumerate(scheduler.timesteps):
        sigma = torch.tensor([model_timestep(scheduler, index, t) / 1000])
        x = scheduler.step(velocity_from_sample(c, x, sigma, floor=0.0), t, x, return_dict=False)[0]
    assert torch.allclose(x, c, atol=1e-5), (x - c).abs().max()  # exact: the last step lands on the model's x0


def test_the_x0_objective_is_jits_velocity_loss():
    """prediction="sample": the loss of an x0 guess equals JiT's mean(((x0 - guess) / max(sigma, 0.05))^2), computed
    here from the noise level alone, and an exact guess has loss 0 at every sigma (the floor applies to both sides)."""
    import torch.nn.functional as F

    from train_dit.diffusion import noisy_inputs, training_output, training_scheduler

    cfg = DitTrainConfig(scheduler="flow", prediction="sample", logit_std=3.0, sample=SampleSpec(sampler="euler"))
    x0 = torch.rand(64, 3, 4, 4) * 2 - 1
    x_t, timesteps, target = noisy_inputs(
        training_scheduler(cfg), cfg, x0, [torch.Generator().manual_seed(i) for i in range(64)]
    )
    sigma = timesteps / 1000
    assert (sigma < 0.05).any() and (sigma > 0.5).any()  # both sides of the floor are exercised
    guess = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(99))
    expected = (((x0 - guess) / sigma.clamp_min(0.05).view(-1, 1, 1, 1)) ** 2).mean()
    assert torch.allclose(F.mse_loss(training_output(cfg, guess, x_t, timesteps), target), expected, rtol=1e-4)
    assert F.mse_loss(training_output(cfg, x0, x_t, timesteps), target) < 1e-10


@pytest.mark.parametrize("objective, sampler", [("flow", "ddpm"), ("ddpm", "euler")])
def test_a_sampler_that_does_not_fit_the_objective_is_refused(objective, sampler):
    from train_dit.diffusion import sampling_scheduler, training_scheduler

    trained = training_scheduler(
        DitTrainConfig(scheduler=objective, sample=SampleSpec(sampler="euler" if objective == "flow" else "ddpm"))
    )
    with pytest.raises(
        ConfigError, match=f"sampler='{sampler}' does not fit a model trained with scheduler={objective}"
    ):
        sampling_scheduler({**trained.config, "_class_name": type(trained).__name__}, sampler)


# --- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: DitTrainConfig(scheduler="ddim"), "train.scheduler='ddim' is unknown; choose one of ddpm, flow"),
        (lambda: SampleSpec(guidance_scale=-1.0), "train.sample.guidance_scale=-1.0 must be >= 0"),
        (
            lambda: DitModelConfig(image_size=32, patch_size=3),
            "model.patch_size=3 does not divide the 32x32 latent grid",
        ),
        (lambda: DitModelConfig(preset="DiT-XXL"), "model.preset='DiT-XXL' is unknown"),
        (lambda: DitTrainConfig(caption_dropout=1.0), "train.caption_dropout=1.0 must be in [0, 1)"),
        (
            lambda: DitTrainConfig(scheduler="ddpm", sample=SampleSpec(sampler="euler")),
            "train.sample.sampler=euler does not fit train.scheduler=ddpm",
        ),
        (
            lambda: DitTrainConfig(scheduler="flow", sample=SampleSpec(sampler="ddpm")),
            "train.sample.sampler=ddpm does not fit train.scheduler=flow",
        ),
        (lambda: DitTrainConfig(val_levels=[0.0, 0.5]), "train.val_levels=[0.0, 0.5] must be noise levels in (0, 1)"),
        (
            lambda: DitTrainConfig(prediction="x0"),
            "train.prediction='x0' is unknown; choose one of epsilon, sample, velocity",
        ),
        (
            lambda: DitTrainConfig(scheduler="ddpm", prediction="sample"),
            "train.prediction='sample' does not fit train.scheduler=ddpm; choose one of epsilon",
        ),
        (
            lambda: DitTrainConfig(scheduler="flow", prediction="epsilon", sample=SampleSpec(sampler="euler")),
            "train.prediction='epsilon' does not fit train.scheduler=flow; choose one of velocity, sample",
        ),
    ],
)
def test_bad_config_values_fail_in_one_line(build, message):
    with pytest.raises(ConfigError) as caught:
        build()
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_bad_values_on_the_command_line_exit_2_with_one_line(capsys):
    from pipeline.cli import main

    for override, expected in (
        ("train.scheduler=ddim", "train.scheduler='ddim' is unknown"),
        ("train.sample.guidance_scale=-2", "guidance_scale=-2.0 must be >= 0"),
        ("model.patch_size=5", "model.patch_size=5 does not divide"),
    ):
        assert main(["+experiment=dit_scenes", override, "run.out_root=/nonexistent/never"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and expected in err and "\n" not in err, err


# --- text encoders ---------------------------------------------------------------------------------------------


def test_a_harness_clip_export_conditions_the_dit_with_its_text_tokens(tmp_path):
    """kind=clip_export: the token features are the CLIP text tower's own (projecting the end-of-text token's feature
    gives encode_text), the mask stops at end-of-text, and the features match the model that was exported."""
    import open_clip

    import train_clip  # noqa: F401  (registers RecapCLIP-nano)
    from train_clip.config import ClipModelConfig
    from train_clip.models import export_model
    from train_dit.config import TextEncoderSpec

    torch.manual_seed(0)
    clip = open_clip.create_model("RecapCLIP-nano").eval()
    export_model(clip, ClipModelConfig(name="RecapCLIP-nano"), 64, str(tmp_path / "clip"))
    encoder = TextEncoder(TextEncoderSpec(kind="clip_export", name=str(tmp_path / "clip")))
    texts = ["a red circle", "two small blue dotted squares at the top left, on a white background"]
    features, mask = encoder.encode(texts)
    tokens = open_clip.get_tokenizer("RecapCLIP-nano")(texts)
    eot = tokens.argmax(-1)
    assert mask.sum(1).tolist() == (eot + 1).tolist() and features.shape == (2, int(eot.max()) + 1, 64)
    pooled = features[torch.arange(2), eot] @ clip.text_projection
    torch.testing.assert_close(pooled, clip.encode_text(tokens).detach(), rtol=1e-4, atol=1e-5)


def test_the_same_key_in_two_shards_keeps_its_own_image_and_caption_features():
    """A sample is (shard, key) in the DiT feature store too (issue 14, item 6): nothing dropped, nothing mixed up."""
    import torch

    from train_dit.features import FeatureStore

    def part(value: float, caption: str) -> dict:
        return {
            "keys": ["k0"],
            "x0": torch.full((1, 1, 3, 2, 2), value),
            "texts": [caption],
            "text_sample": torch.tensor([0]),
            "text_lengths": torch.tensor([2]),
            "text_features": torch.full((2, 4), value, dtype=torch.float16),
            "skipped": {},
        }

    store = FeatureStore([part(1.0, "a red star"), part(2.0, "a blue square")], ["shard-a.tar", "shard-b.tar"])
    assert store.skipped == {}
    assert (
        float(store.images.get("k0", "shard-a.tar").max()) == 1.0
        and float(store.images.get("k0", "shard-b.tar").max()) == 2.0
    )
    assert float(store.text("k0", "a blue square", "shard-b.tar").max()) == 2.0
    with pytest.raises(KeyError, match="shard-a.tar"):
        store.text("k0", "a blue square", "shard-a.tar")
