"""The text-to-image tasks end to end on scene shards with stand-in generators: the oracle (returns each prompt's own
real image), a shuffled oracle, a constant and a NaN generator; CLIP score with a tiny random open_clip; the
prompt-following recognizer's threshold; records through evaluate_checkpoint."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from captiondata.builders.scenes import parse_scene_description, scene_record
from captiondata.writer import ShardWriter
from evals.tasks import prompt_following as P
from evals.tasks import t2i
from evals.tasks.config import EvalConfig, T2ITaskConfig, task_config
from evals.tasks.registry import GENERATOR, TASKS, ImageGenerator, ImageTextEmbedder
from evals.tasks.suite import evaluate_checkpoint
from harness_infra.errors import BrokenModelError, ConfigError

N = 24


@pytest.fixture(scope="module")
def scene_shards(tmp_path_factory) -> tuple:
    """N val scenes in project shards; returns (spec, records)."""
    folder = tmp_path_factory.mktemp("scenes")
    records = [scene_record("val", i) for i in range(N)]
    writer = ShardWriter(str(folder), "val", max_count=10)
    writer.write_all(records)
    writer.close()
    return str(folder / "val-*.tar"), records


class Oracle:
    """Generates the real image of the sample whose caption the prompt is (shift > 0: the image of another sample)."""

    def __init__(self, records, shift: int = 0, size: int = 32) -> None:
        self.by_prompt = {}
        for i, r in enumerate(records):
            other = records[(i + shift) % len(records)]
            image = torch.from_numpy(
                np.asarray(other.image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
            ).permute(2, 0, 1)
            for text in [r.original] + r.recaptions:
                self.by_prompt[text] = image
        self.transformer = torch.nn.Linear(2, 2)
        self.calls = 0
        self.batches = []  # (batch size, batch_invariant) of each call

    def generate(self, prompts, seeds, spec):
        self.calls += len(prompts)
        self.batches.append((len(prompts), spec.batch_invariant))
        return torch.stack([self.by_prompt[p] for p in prompts])


def task(
    name: str, kind: str, spec: str, batch_invariant: bool = True, generate_batch: int = 16, **kw
) -> T2ITaskConfig:
    generation = {
        "steps": 3,
        "sampler": "ddpm",
        "guidance_scale": 2.0,
        "batch_invariant": batch_invariant,
        "batch_size": generate_batch,
    }
    return task_config(name=name, task=kind, path=spec, generation=generation, **kw)


def cfg_for(tmp_path, tasks=()) -> EvalConfig:
    return EvalConfig(
        cache_dir=str(tmp_path / "cache"),
        records_dir=str(tmp_path / "records"),
        bootstrap_samples=100,
        tasks=list(tasks),
    )


def tiny_open_clip() -> ImageTextEmbedder:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=32, patch_size=8, image_size=32, head_width=16),
        text_cfg=open_clip.CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    )
    preprocess = open_clip.image_transform(32, is_train=False)
    return ImageTextEmbedder(model.eval(), open_clip.get_tokenizer("ViT-B-32", context_length=16), preprocess)


def test_prompt_set_and_cached_generation_with_settings_recorded(tmp_path, scene_shards):
    spec, records = scene_shards
    gen = ImageGenerator(Oracle(records), weights_id="oracle")
    raw, recap = (
        t2i.open_prompt_set(task("p", "fid", spec, prompt_source=s, max_samples=10)) for s in ("original", "recap")
    )
    assert raw.prompts == [r.original for r in records[:10]] and recap.prompts == [
        r.recaptions[0] for r in records[:10]
    ]
    assert raw.reference_fingerprint == recap.reference_fingerprint and raw.fingerprint != recap.fingerprint
    cfg, config = cfg_for(tmp_path), task("p", "fid", spec, prompt_source="recap", max_samples=10)
    first = t2i.generated_images(gen, recap.prompts, config, cfg)
    again = t2i.generated_images(gen, recap.prompts, config, cfg)
    assert (
        gen.pipeline.calls == 10
        and [np.asarray(a).tolist() == np.asarray(b).tolist() for a, b in zip(first, again)] == [True] * 10
    )
    folder = os.path.join(cfg.cache_dir, t2i.IMAGES_DIR)
    (sub,) = os.listdir(folder)
    with open(os.path.join(folder, sub, "00003.json")) as handle:
        meta = json.load(handle)
    assert meta == {
        "index": 3,
        "prompt": recap.prompts[3],
        "seed": 3,
        "guidance_scale": 2.0,
        "steps": 3,
        "sampler": "ddpm",
        "batch_invariant": True,
        "generate_batch": 16,
        "generator": "oracle",
    }


def test_batched_generation_is_keyed_by_its_batch_and_sets_the_pipelines_mode(tmp_path, scene_shards):
    """batch_invariant=false: the pipeline runs whole batches (the task's spec says so) and, since an image then
    depends on its batch at float rounding, the batch size enters the image cache key; invariant runs ignore it."""
    spec, records = scene_shards
    oracle = Oracle(records)
    gen, cfg = ImageGenerator(oracle, weights_id="oracle"), cfg_for(tmp_path)
    prompts = [r.original for r in records[:6]]
    t2i.generated_images(gen, prompts, task("p", "fid", spec, batch_invariant=False, generate_batch=4), cfg)
    assert oracle.batches == [(4, False), (2, False)] and oracle.calls == 6
    t2i.generated_images(gen, prompts, task("p", "fid", spec, batch_invariant=False, generate_batch=2), cfg)
    assert oracle.calls == 12  # another batch size: other images, generated again
    t2i.generated_images(gen, prompts, task("p", "fid", spec, generate_batch=3), cfg)
    t2i.generated_images(gen, prompts, task("p", "fid", spec, generate_batch=2), cfg)
    assert (
        oracle.batches[-2:] == [(3, True), (3, True)] and oracle.calls == 18
    )  # one prompt at a time: the batch size changes nothing
    assert len(os.listdir(os.path.join(cfg.cache_dir, t2i.IMAGES_DIR))) == 3


def test_broken_generators_get_a_clear_error_not_a_score(tmp_path, scene_shards):
    spec, records = scene_shards

    class Constant(Oracle):
        def generate(self, prompts, *args, **kwargs):
            return torch.full((len(prompts), 3, 32, 32), 0.5)

    class NaN(Oracle):
        def generate(self, prompts, *args, **kwargs):
            out = torch.rand(len(prompts), 3, 32, 32)
            out[1, 0, 0, 0] = float("nan")
            return out

    for broken, message in ((Constant(records), "identical"), (NaN(records), "NaN")):
        with pytest.raises(BrokenModelError, match=message):
            t2i.run_fid_task(
                ImageGenerator(broken, weights_id="b"), task("f", "fid", spec, max_samples=6), cfg_for(tmp_path)
            )


def test_clip_score_equals_the_formula_and_truncation_keeps_the_end_token(tmp_path, scene_shards):
    from evals.tasks.textstats import tokenize_with_truncation

    spec, records = scene_shards
    embedder = tiny_open_clip()
    images = [r.image.convert("RGB") for r in records[:6]]
    prompts = [r.recaptions[0] for r in records[:6]]
    scores, truncated = t2i.clip_score_values(embedder, images, prompts, cfg_for(tmp_path))
    with torch.no_grad():  # independent: the model's own forward, cosine by hand, torchmetrics' clamp per pair
        img = embedder.model.encode_image(torch.stack([embedder.preprocess(i) for i in images])).double()
        txt = embedder.model.encode_text(embedder.tokenizer(prompts)).double()
    cos = (img * txt).sum(1) / img.norm(dim=1) / txt.norm(dim=1)
    assert scores == pytest.approx((100 * cos.clamp(min=0)).numpy(), abs=1e-4)
    tokens, mask = tokenize_with_truncation(embedder.tokenizer, prompts, 16)
    assert truncated == int(mask.sum()) > 0  # recaptions run past 16 tokens
    eot = embedder.tokenizer.eot_token_id
    assert all(int(row[row != 0][-1]) == eot for row in tokens)


def test_fid_task_oracle_is_near_zero_and_grows_when_images_darken(tmp_path, scene_shards, monkeypatch):
    """FID (tiny stand-in network) of the oracle against the references, cached reference statistics on a repeat."""
    from evals.tasks import fid as F

    spec, records = scene_shards
    torch.manual_seed(0)
    small = F.FidInceptionFeatures(
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 9, stride=8), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        ),
        num_features=6,
    )
    monkeypatch.setattr(F, "default_extractor", lambda device="cpu": small)
    cfg = cfg_for(tmp_path)
    oracle = task("fid_oracle", "fid", spec, max_samples=N, fid_bootstrap=20, kid_subsets=5, kid_subset_size=10)
    result = t2i.run_fid_task(ImageGenerator(Oracle(records, size=64), weights_id="oracle"), oracle, cfg)
    assert result.metrics["fid"] < 0.01 and result.n == {"generated": N, "prompts": N, "reference": N}
    assert result.extra["guidance_scale"] == 2.0 and result.extra["steps"] == 3 and result.extra["sampler"] == "ddpm"
    assert (
        "bootstrap over the 24 generated images" in result.interval_methods["fid"]
        and "subsets" in result.interval_methods["kid"]
    )
    again = t2i.run_fid_task(ImageGenerator(Oracle(records, size=64), weights_id="oracle"), oracle, cfg)
    assert again.extra["reference_statistics_cached"] and again.metrics["fid"] == result.metrics["fid"]

    class Dark(Oracle):
        def generate(self, *args, **kwargs):
            return super().generate(*args, **kwargs) * 0.7

    dark = t2i.run_fid_task(ImageGenerator(Dark(records, size=64), weights_id="dark"), oracle, cfg)
    assert dark.metrics["fid"] > 100 * max(result.metrics["fid"], 1e-4)
    # a 32 px generator is compared with the 64 px references brought to 32 px as its training images were made
    small_oracle = t2i.run_fid_task(ImageGenerator(Oracle(records, size=32), weights_id="oracle32"), oracle, cfg)
    assert small_oracle.extra["reference_size"] == [32, 32] and small_oracle.extra["reference_resized_from"] == [64, 64]
    assert result.extra["reference_resized_from"] is None and small_oracle.metrics["fid"] < 0.05


@pytest.mark.slow
def test_recognizer_reaches_the_threshold_and_scores_the_oracle_above_the_shuffled_oracle(tmp_path, scene_shards):
    """The default recognizer (3,000 renders, 6 epochs) passes 95% held-out; the oracle's recap prompts are followed,
    the shuffled oracle's (same images, wrong prompts) are not."""
    spec, records = scene_shards
    cfg = cfg_for(tmp_path)
    config = task("pf", "prompt_following", spec, prompt_source="recap", max_samples=N)
    right = t2i.run_prompt_following_task(ImageGenerator(Oracle(records), weights_id="oracle"), config, cfg)
    wrong = t2i.run_prompt_following_task(ImageGenerator(Oracle(records, shift=2), weights_id="shuffled"), config, cfg)
    assert min(right.extra["recognizer_heldout_accuracy"].values()) >= P.MIN_ACCURACY
    # in its own domain, on the real renders (whatever the generator drew): exact matches and swapped-partner preference
    real, swapped = right.extra["recognizer_real_overall"], right.extra["recognizer_swap_preference"]
    assert real["images"] == swapped["images"] == N and real == wrong.extra["recognizer_real_overall"]
    assert real["value"] >= 0.8 and swapped["preferred"] >= 0.8  # chance is 0.5
    assert right.metrics["overall"] >= 0.8 and right.metrics["object"] >= 0.85  # ~0.96 per object, 2-3 objects a scene
    assert wrong.metrics["overall"] <= 0.2 and wrong.metrics["position"] < right.metrics["position"]


def test_recognizer_threshold_is_enforced():
    weak = P.train_recognizer(P.RecognizerSpec(train_scenes=100, heldout_scenes=60, epochs=1))
    assert weak.min_accuracy < P.MIN_ACCURACY
    with pytest.raises(ConfigError, match="below 0.95; no prompt-following score is published"):
        weak.check()


def test_score_prompt_checks_only_what_the_prompt_states():
    groups = parse_scene_description(
        "Two small red striped circles at the top left and a large blue solid square in the center."
    )
    cells = np.zeros((9, 4), dtype=np.int64)
    cells[0] = [1 + 0, 0, 1, 0]  # two small red circles, top left
    cells[4] = [1 + 1, 4, 0, 1]  # a large blue square, center
    assert P.score_prompt(groups, cells) == {
        "object": 1.0,
        "colour": 1.0,
        "count": 1.0,
        "position": 1.0,
        "overall": 1.0,
    }
    moved = cells.copy()
    moved[[0, 8]] = moved[[8, 0]]
    assert P.score_prompt(groups, moved) == {
        "object": 1.0,
        "colour": 1.0,
        "count": 1.0,
        "position": 0.0,
        "overall": 0.0,
    }
    recoloured = cells.copy()
    recoloured[4, 1] = 3  # green
    assert P.score_prompt(groups, recoloured)["colour"] == 0.0
    terse = parse_scene_description("red circle icon")
    assert P.score_prompt(terse, cells) == {
        "object": 1.0,
        "colour": 1.0,
        "count": None,
        "position": None,
        "overall": 1.0,
    }


def test_generator_tasks_are_registered_and_rejected_on_a_clip(tmp_path, scene_shards):
    spec, _ = scene_shards
    assert {name for name, s in TASKS.items() if s.evaluates == GENERATOR} == {
        "fid",
        "clip_score",
        "prompt_following",
        "vlm_judge",
    }
    with pytest.raises(ConfigError, match="evaluates an image_generator"):
        evaluate_checkpoint(tiny_open_clip(), cfg_for(tmp_path, [task("f", "fid", spec)]), "clip", write=False)
    with pytest.raises(ConfigError, match="clip_score needs one of evaluator"):
        task("c", "clip_score", spec)
    with pytest.raises(ConfigError, match="prompt_source"):
        task("c", "fid", spec, prompt_source="both")


def test_judge_task_without_a_judge_is_undefined_and_recorded(tmp_path, scene_shards):
    spec, records = scene_shards
    cfg = cfg_for(tmp_path, [task("judge", "vlm_judge", spec, max_samples=4)])
    (record,) = evaluate_checkpoint(
        ImageGenerator(Oracle(records), weights_id="oracle", description={"name": "oracle"}), cfg, "oracle"
    )
    assert record["metrics"] == {"judge_rating": None} and "no judge configured" in record["undefined"]["judge_rating"]
    assert record["model"]["weights_id"] == "oracle" and os.path.isfile(record["path"])


@pytest.mark.slow
def test_the_runner_trains_a_dit_and_scores_it_with_the_t2i_tasks(tmp_path):
    """python -m evals.run: data -> features -> train (DiT-micro, a few steps) -> eval (t2i_smoke: FID/KID raw and
    recap through the real FID Inception, the judge undefined) -> tables; records carry counts, guidance, steps and
    sampler."""
    import glob
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "runs"
    command = [
        sys.executable,
        "-m",
        "evals.run",
        "+experiment=dit_smoke",
        "eval=t2i_smoke",
        f"run.out_root={out}",
        f"run.results_dir={tmp_path / 'results'}",
        "run.stages=[data,features,train,eval,tables]",
    ]
    done = subprocess.run(
        command, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = {}
    for path in glob.glob(str(out / "eval" / "*" / "records" / "*.json")):
        with open(path) as handle:
            record = json.load(handle)
        records[record["task_name"]] = record
    assert set(records) == {"smoke_raw_fid", "smoke_recap_fid", "smoke_judge"}
    fid = records["smoke_recap_fid"]
    assert fid["metrics"]["fid"] > 0 and fid["n"]["generated"] == fid["n"]["reference"] == 8
    assert (fid["extra"]["guidance_scale"], fid["extra"]["steps"], fid["extra"]["sampler"]) == (10.0, 5, "dpm++")
    assert (
        "bootstrap" in fid["whole_set_interval_methods"]["fid"]
        and records["smoke_judge"]["metrics"]["judge_rating"] is None
    )
    assert fid["extra"]["reference_statistics_cached"]  # raw and recap prompts share their reference images
    tables = sorted(glob.glob(str(tmp_path / "results" / "*.md")))
    # the DiT family's own table (Table 7 in shape) and the verdicts page (report.verdicts)
    assert [os.path.basename(t) for t in tables] == ["paper.md", "scenes_t2i.md"]
    tables = tables[1:]
    assert "smoke_recap_fid" in open(tables[0]).read()


def test_whole_set_records_publish_and_compare_without_per_query_values(tmp_path, scene_shards, monkeypatch):
    """An FID record has no per-query sidecar: the paired comparison of two of them is empty, never a crash."""
    from evals.results.records import compare_records
    from evals.tasks import fid as F

    spec, records = scene_shards
    torch.manual_seed(0)
    small = F.FidInceptionFeatures(
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 9, stride=8), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        ),
        num_features=6,
    )
    monkeypatch.setattr(F, "default_extractor", lambda device="cpu": small)
    config = task("fid", "fid", spec, max_samples=12, fid_bootstrap=5, kid_subsets=3, kid_subset_size=6)
    paths = [
        evaluate_checkpoint(
            ImageGenerator(Oracle(records, shift=s), weights_id=f"g{s}"), cfg_for(tmp_path / str(s), [config]), f"g{s}"
        )[0]["path"]
        for s in (0, 1)
    ]
    assert compare_records(paths[0], paths[1]) == {}


def test_swap_preference_counts_ties_as_half():
    assert t2i.swap_preference([1.0, 0.0, 1.0, 0.2], [0.0, 0.0, 1.0, 0.9]) == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)


def test_clip_score_records_its_evaluators_preference_for_the_true_caption_on_real_renders(
    tmp_path, scene_shards, monkeypatch
):
    spec, records = scene_shards
    embedder = tiny_open_clip()
    monkeypatch.setattr(t2i, "load_evaluator", lambda *args, **kwargs: (embedder, "tiny"))
    config = task("cs", "clip_score", spec, prompt_source="recap", max_samples=N, evaluator="tiny", expert_path=None)
    result = t2i.run_clip_score_task(ImageGenerator(Oracle(records), weights_id="oracle"), config, cfg_for(tmp_path))
    found = result.extra["evaluator_swap_preference"]
    assert found["images"] == N and found["real_size"] == [32, 32]
    prompt_set = t2i.open_prompt_set(config)
    assert prompt_set.partners == [i + 1 - 2 * (i % 2) for i in range(N)]  # val samples 2k, 2k+1 are pairs
    real, _, _ = t2i.references_at_size(prompt_set, (32, 32))
    with torch.no_grad():  # independent: the model's own forward on the real renders, cosine by hand
        img = embedder.model.encode_image(torch.stack([embedder.preprocess(i) for i in real])).double()
        txt = embedder.model.encode_text(embedder.tokenizer([r.recaptions[0] for r in records])).double()
    img, txt = img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)
    own = (img * txt).sum(1).clamp(min=0)
    other = (img * txt[prompt_set.partners]).sum(1).clamp(min=0)
    assert found["preferred"] == pytest.approx(float(((own > other).double() + 0.5 * (own == other).double()).mean()))
