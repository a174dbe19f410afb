"""A DiT export is a diffusers pipeline: ``DiffusionPipeline.from_pretrained(EXPORT, trust_remote_code=True)`` in a
fresh process that imports no harness code samples the harness's own images (``DitPipeline.generate``) within 1e-5
for the same seeds and settings, in pixel space and latent space, for every sampler; the exported scheduler is the
sampling one; the model card names p and the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List

import pytest
import torch

from captiondata.builders.scenes import scene_records
from captiondata.config import DataConfig, MixConfig
from captiondata.writer import ShardWriter
from train_dit.config import DitModelConfig, DitTrainConfig, ImageSpaceSpec, SampleSpec, TextEncoderSpec
from train_dit.image import tiny_vae_config

PROMPTS = ["a red circle", "a large blue dotted square at the top left"]
SEEDS = [7, 8]
GUIDANCE, STEPS = 10.0, 10
THREADS = 1  # the thread count of every test (conftest.one_thread); the diffusers process uses the same
COMMAND = "python -m evals.run trainer=dit mix.p=0.3 experiment=card-test"
# name -> (image space, objective, prediction, sampler); "-openclip": an open_clip text tower (a harness CLIP export),
# which is no diffusers component
EXPORTS = {
    "pixel-ddpm-openclip": ("pixels", "ddpm", None, "ddpm"),
    "pixel-ddpm": ("pixels", "ddpm", None, "ddpm"),
    "pixel-dpm": ("pixels", "ddpm", None, "dpm++"),
    "latent-ddpm": ("vae", "ddpm", None, "ddpm"),
    "latent-flow-x0": ("vae", "flow", "sample", "euler"),
    "latent-flow-dpm": ("vae", "flow", "velocity", "dpm++"),
}

# Plain diffusers only: loads each export with the one documented line and samples; records which harness modules
# got imported (none may be) and, for the pixel DDPM export, what its TRAINING scheduler would have sampled.
DIFFUSERS_SCRIPT = r"""
import json, sys, torch
from diffusers import DDPMScheduler, DiffusionPipeline
exports, out, prompts, seeds, guidance, steps, threads, embeds_path = json.loads(sys.argv[1])
torch.set_num_threads(threads)
embeds = torch.load(embeds_path, weights_only=True)
images, defaults = {}, {}
try:  # without trust_remote_code diffusers refuses the export's pipeline.py in one line
    DiffusionPipeline.from_pretrained(exports["pixel-ddpm"])
except ValueError as error:
    defaults["untrusted-error"] = str(error)
for name, path in exports.items():
    pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    gens = lambda: [torch.Generator().manual_seed(s) for s in seeds]
    if name.endswith("-openclip"):  # no text encoder in the export: the caller's prompt embeddings
        try:
            pipe(prompts)
        except ValueError as error:
            defaults[name + "-error"] = str(error)
        text = embeds[name]
        images[name] = pipe(prompt_embeds=text["cond"][0], prompt_attention_mask=text["cond"][1], negative_prompt_embeds=text["null"][0],
                            negative_prompt_attention_mask=text["null"][1], num_inference_steps=steps, guidance_scale=guidance,
                            generator=gens(), output_type="pt").images
        default = pipe(prompt_embeds=text["cond"][0][:1], prompt_attention_mask=text["cond"][1][:1], negative_prompt_embeds=text["null"][0],
                       negative_prompt_attention_mask=text["null"][1], num_inference_steps=2).images
        defaults[name] = [type(default[0]).__name__, list(default[0].size), type(pipe).__name__, pipe.vae is None]
        continue
    images[name] = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens(), output_type="pt").images
    default = pipe(prompts[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images  # output_type="pil"
    defaults[name] = [type(default[0]).__name__, list(default[0].size), type(pipe).__name__, pipe.vae is None]
    if name == "pixel-ddpm":
        pipe.scheduler = DDPMScheduler.from_pretrained(path, subfolder="train_scheduler")
        images["pixel-ddpm-train-scheduler"] = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens(),
                                                    output_type="pt").images
harness = sorted(m for m in sys.modules if m.split(".")[0] in ("train_dit", "captiondata", "harness_infra", "towers", "training"))
torch.save({"images": images, "defaults": defaults, "harness_modules": harness}, out)
"""


def scene_shards(folder: str, n: int = 32) -> str:
    """The first ``n`` training scenes (original + recaption each) in shards of 16; their shard spec."""
    writer = ShardWriter(folder, "train", max_count=16)
    writer.write_all(list(scene_records("train", n)))
    writer.close()
    return os.path.join(folder, "train-*.tar")


def train_export(
    out: str, shards: str, space: str, objective: str, prediction: str, sampler: str, text: TextEncoderSpec
) -> str:
    """A DiT-micro trained 2 steps of 16 on the scenes at 32 px (pixels, or 4x4x4 latents of a random AutoencoderKL
    with patch 2) conditioned on ``text``, p = 0.3; its export folder."""
    from train_dit.train import train

    image_space = ImageSpaceSpec(kind="vae", config=tiny_vae_config()) if space == "vae" else ImageSpaceSpec()
    model = DitModelConfig(
        name="DiT-micro",
        preset="DiT-micro",
        image_size=32,
        patch_size=2 if space == "vae" else None,
        image_space=image_space,
        text_encoder=text,
    )
    cfg = DitTrainConfig(
        samples=32,
        batch_size=16,
        lr=1e-3,
        device="cpu",
        tensorboard=False,
        progress_bar=False,
        deterministic=True,
        log_every=1,
        features=False,
        scheduler=objective,
        prediction=prediction,
        sample=SampleSpec(sampler=sampler, steps=STEPS, guidance_scale=GUIDANCE),
    )
    data = DataConfig(builder="none", train_shards=shards, num_workers=0, shuffle_buffer=8)
    return train(model, cfg, data, MixConfig(p=0.3), out, command=COMMAND).export_dir


@pytest.fixture(scope="module")
def clip_text(tmp_path_factory) -> TextEncoderSpec:
    """An open_clip text tower with fixed weights: a random RecapCLIP-nano exported as the CLIP train stage does."""
    import open_clip

    import train_clip.models  # noqa: F401  (registers RecapCLIP-nano)
    from train_clip.config import ClipModelConfig
    from train_clip.models import export_model

    folder = str(tmp_path_factory.mktemp("clip_text") / "clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        export_model(
            open_clip.create_model("RecapCLIP-nano").eval(), ClipModelConfig(name="RecapCLIP-nano"), 64, folder
        )
    return TextEncoderSpec(kind="clip_export", name=folder)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, clip_text) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("dit_diffusers")
    shards = scene_shards(str(root / "shards"))
    return {
        name: train_export(
            str(root / name), shards, *spec, clip_text if name.endswith("-openclip") else TextEncoderSpec()
        )
        for name, spec in EXPORTS.items()
    }


def harness_embeddings(spec: TextEncoderSpec) -> dict:
    """The prompts' and the empty caption's features as the harness conditions on them (``train_dit.text``: each
    encoded alone, zero-padded to ``max_length``), for exports without a diffusers text encoder."""
    from train_dit.text import TextEncoder, null_condition, pad_features, unpad_features

    threads = torch.get_num_threads()  # module fixtures run before conftest's one_thread: use the tests' count
    torch.set_num_threads(THREADS)
    try:
        encoder = TextEncoder(spec)
        rows = [unpad_features(*encoder.encode([prompt]))[0] for prompt in PROMPTS]
        null = null_condition(encoder)[0]
    finally:
        torch.set_num_threads(threads)
    return {"cond": pad_features(rows, length=spec.max_length), "null": pad_features([null], length=spec.max_length)}


@pytest.fixture(scope="module")
def diffusers_run(exports, clip_text, tmp_path_factory) -> dict:
    """The DIFFUSERS_SCRIPT's results, run in a subprocess (diffusers' module cache in a temporary folder) with one
    torch thread, as the tests run (conftest's ``one_thread``): CPU GEMMs round differently for another count, and guidance 10 with DPM-Solver++'s
    thresholding turns that into 2.7e-5 between two harness runs with 1 and 2 threads (measured)."""
    folder = tmp_path_factory.mktemp("diffusers_process")
    out = str(folder / "images.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(folder / "modules"), "HF_HUB_OFFLINE": "1"}
    embeds = str(folder / "embeds.pt")
    torch.save({name: harness_embeddings(clip_text) for name in exports if name.endswith("-openclip")}, embeds)
    args = json.dumps([exports, out, PROMPTS, SEEDS, GUIDANCE, STEPS, THREADS, embeds])
    done = subprocess.run(
        [sys.executable, "-c", DIFFUSERS_SCRIPT, args],
        cwd=str(folder),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {**torch.load(out, weights_only=False), "threads": THREADS}


def harness_images(export: str, sampler: str) -> torch.Tensor:
    from train_dit.sample import DitPipeline
    from training.generation import GenerationSpec

    return DitPipeline.from_pretrained(export).generate(
        PROMPTS, SEEDS, GenerationSpec(guidance_scale=GUIDANCE, steps=STEPS, sampler=sampler)
    )


@pytest.mark.parametrize("name", list(EXPORTS))
def test_plain_diffusers_samples_the_harness_images(name, exports, diffusers_run, capsys):
    """Same prompts, seeds, 10 steps, guidance 10: max |diff| <= 1e-5 against the harness's sampler, with no harness
    module imported by the diffusers process."""
    theirs = diffusers_run["images"][name]
    assert torch.get_num_threads() == diffusers_run["threads"]
    ours = harness_images(exports[name], EXPORTS[name][3])
    assert theirs.shape == ours.shape == (2, 3, 32, 32)
    diff = float((theirs - ours).abs().max())
    with capsys.disabled():
        print(f"\n{name}: max |diff| diffusers vs harness = {diff:.3g}")
    assert diff <= 1e-5
    assert float(ours.std()) > 0.05  # real images, not a constant both sides could agree on
    assert diffusers_run["harness_modules"] == []


def test_the_training_scheduler_would_not_sample_the_harness_images(exports, diffusers_run):
    """Why scheduler/ is the sampling scheduler: in pixel space the harness clips DDPM's x0 estimates to [-1, 1];
    the training scheduler (clip_sample=False) samples other images."""
    ours = harness_images(exports["pixel-ddpm"], "ddpm")
    assert float((diffusers_run["images"]["pixel-ddpm-train-scheduler"] - ours).abs().max()) > 0.1


def test_the_exported_scheduler_carries_the_harness_sampling_settings(exports):
    def config(name: str, folder: str = "scheduler") -> dict:
        with open(os.path.join(exports[name], folder, "scheduler_config.json"), encoding="utf-8") as handle:
            return json.load(handle)

    assert config("pixel-ddpm")["_class_name"] == "DDPMScheduler" and config("pixel-ddpm")["clip_sample"] is True
    assert config("pixel-ddpm", "train_scheduler")["clip_sample"] is False
    assert (
        config("pixel-dpm")["_class_name"] == "DPMSolverMultistepScheduler"
        and config("pixel-dpm")["thresholding"] is True
    )
    assert config("pixel-dpm")["sample_max_value"] == 1.0 and config("pixel-dpm")["algorithm_type"] == "dpmsolver++"
    assert config("latent-ddpm")["clip_sample"] is False
    assert (
        config("latent-flow-dpm")["use_flow_sigmas"] is True
        and config("latent-flow-dpm")["prediction_type"] == "flow_prediction"
    )
    with open(os.path.join(exports["pixel-ddpm"], "model_index.json"), encoding="utf-8") as handle:
        index = json.load(handle)
    assert index["_class_name"] == ["pipeline", "RecapDiTPipeline"] and index["vae"] == [None, None]
    assert index["text_encoder"] == ["transformers", "BertModel"] and index["prediction"] == "epsilon"


def test_the_default_output_type_works_without_a_vae(diffusers_run):
    """Pixel space: vae=None and the default output_type gives PIL images at the export's image size."""
    assert diffusers_run["defaults"]["pixel-ddpm"] == ["Image", [32, 32], "RecapDiTPipeline", True]
    assert diffusers_run["defaults"]["latent-ddpm"] == ["Image", [32, 32], "RecapDiTPipeline", False]
    assert diffusers_run["defaults"]["pixel-ddpm-openclip"] == ["Image", [32, 32], "RecapDiTPipeline", True]
    assert "Pass `trust_remote_code=True`" in diffusers_run["defaults"]["untrusted-error"]


def test_an_open_clip_text_tower_is_left_to_prompt_embeds(exports, diffusers_run):
    """An open_clip text tower is no diffusers component: the export names none, and prompts without embeddings are
    refused in one line (its images, from the harness's own embeddings, are checked above)."""
    with open(os.path.join(exports["pixel-ddpm-openclip"], "model_index.json"), encoding="utf-8") as handle:
        index = json.load(handle)
    assert index["text_encoder"] == [None, None] and index["tokenizer"] == [None, None]
    assert diffusers_run["defaults"]["pixel-ddpm-openclip-error"].startswith(
        "this export has no text_encoder/tokenizer"
    )


def test_the_model_card_names_the_data_p_budget_and_command(exports):
    with open(os.path.join(exports["latent-flow-x0"], "README.md"), encoding="utf-8") as handle:
        card = handle.read()
    lines: List[str] = card.splitlines()
    assert lines[0] == "---" and "library_name: diffusers" in lines
    assert "- **p**: 0.3 (probability of the ORIGINAL caption per sample)" in lines
    assert COMMAND in lines and "pipe = DiffusionPipeline.from_pretrained(EXPORT, trust_remote_code=True)" in lines
    assert "- **steps**: 2" in lines and "- **global batch**: 16" in lines and "- **samples seen**: 32" in lines
    assert any(line.startswith("- **train shards**: ") and line.endswith("train-*.tar") for line in lines)
    assert any(line.startswith("- **final training loss**: ") for line in lines)
    assert "- **objective**: flow (sample prediction)" in lines


def test_the_card_command_defaults_to_this_process_command_line(monkeypatch):
    from train_dit.hub import process_command

    monkeypatch.setattr(sys, "argv", [os.path.join("/src", "evals", "run.py"), "+experiment=dit_scenes", "mix.p=0.5"])
    assert process_command() == "python -m evals.run +experiment=dit_scenes mix.p=0.5"
    monkeypatch.setattr(sys, "argv", ["bench.py", "a b"])
    assert process_command() == "python bench.py 'a b'"
