"""A CLIP run killed mid-epoch (and at an epoch end) and resumed through the REAL CaptionLoader (real tar shards,
open_clip's training transform with RandomResizedCrop, open_clip's patch dropout in the model) ends with the weights and losses of the uninterrupted run,
bit for bit; its result (and the pipeline's train-stage info and published run section) says it was resumed."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import noise_jpeg
from safetensors.torch import load_file

from captiondata.config import DataConfig, MixConfig
from captiondata.records import Record
from captiondata.writer import ShardWriter
from train_clip.config import ClipModelConfig, StageConfig, TrainConfig
from train_clip.data import caption_loader_factory
from train_clip.train import train

MICRO = {
    "embed_dim": 32,  # patch dropout draws from the trainer's global torch RNG at every step
    "vision_cfg": {
        "image_size": 32,
        "layers": 2,
        "width": 64,
        "head_width": 32,
        "patch_size": 8,
        "patch_dropout": 0.25,
    },
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
BATCH, SAMPLES, EPOCH_BATCHES = 8, 120, 5  # 40 samples = 5 batches per epoch, 15 steps = 3 epochs


class Crash(RuntimeError):
    """The simulated failure of a victim run."""


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """40 samples in 4 real tar shards (keys restart in every shard: a sample is (shard, key))."""
    out = tmp_path_factory.mktemp("shards")
    writer = ShardWriter(str(out), "train", max_count=10)
    writer.write_all(
        [
            Record(
                key=f"k{i % 10:03d}",
                image=noise_jpeg(i, 48),
                original=f"alt text {i}",
                recaptions=[f"a dense recaption of sample {i}"],
            )
            for i in range(40)
        ]
    )
    writer.close()
    return str(out / "train-*.tar")


def data(spec: str, workers: int) -> DataConfig:
    """The shards through the real loader."""
    return DataConfig(builder="none", train_shards=spec, num_workers=workers, shuffle_buffer=10)


def recipe(every: int) -> TrainConfig:
    """One 15-step stage, deterministic kernels, checkpoints every ``every`` steps, resume=latest."""
    return TrainConfig(
        stages=[StageConfig(image_size=32, samples=SAMPLES, batch_size=BATCH, lr=1e-3, warmup_steps=2)],
        threads=1,
        deterministic=True,
        checkpoint_every_steps=every,
        keep_checkpoints=2,
        resume="latest",
        log_every=1,
        progress_bar=False,
        tensorboard=False,
    )


def crashing_factory(data_cfg: DataConfig, mix_cfg: MixConfig, after: int):
    """The real CaptionLoader factory, whose loader raises ``Crash`` when asked for batch ``after`` + 1 of the run."""
    make = caption_loader_factory(data_cfg, mix_cfg)

    def factory(request):
        loader = make(request)
        real, served = loader.iterate, [0]

        def iterate(skip_batches: int = 0):
            for batch in real(skip_batches):
                if served[0] == after:
                    raise Crash(f"simulated crash after {after} batches")
                served[0] += 1
                yield batch

        loader.iterate = iterate
        return loader

    return factory


def exported(out_dir) -> dict:
    """The exported state dict."""
    return load_file(out_dir / "export" / "open_clip_model.safetensors")


def losses(out_dir) -> list:
    """(step, loss) of every metrics line."""
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def model() -> ClipModelConfig:
    return ClipModelConfig(name="TestCLIP-micro-patchdrop", inline=MICRO)


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """The uninterrupted run (no checkpoints in between), per worker count."""
    runs = {}

    def get(workers: int):
        if workers not in runs:
            out = tmp_path_factory.mktemp(f"reference{workers}")
            result = train(model(), recipe(0), data(shards, workers), MixConfig(p=0.5), str(out))
            runs[workers] = (out, result)
        return runs[workers]

    return get


CASES = [
    pytest.param(0, 3, 7, 6, id="workers0-mid-epoch"),  # resumes at step 6 = epoch 1, batch 1
    pytest.param(0, EPOCH_BATCHES, 6, 5, id="workers0-epoch-end"),  # resumes at step 5 = the end of epoch 0
    pytest.param(2, 3, 8, 6, id="workers2-mid-epoch"),
]


@pytest.mark.parametrize("workers, every, crash_after, resumed_step", CASES)
def test_a_run_resumed_through_the_real_loader_equals_the_uninterrupted_one_bit_for_bit(
    shards, reference, tmp_path, workers, every, crash_after, resumed_step
):
    ref_dir, ref = reference(workers)
    victim = tmp_path / "victim"
    data_cfg, mix_cfg = data(shards, workers), MixConfig(p=0.5)
    with pytest.raises(Crash):
        train(
            model(),
            recipe(every),
            data_cfg,
            mix_cfg,
            str(victim),
            loader_factory=crashing_factory(data_cfg, mix_cfg, crash_after),
        )
    assert not (victim / "export").exists()
    resumed = train(model(), recipe(every), data_cfg, mix_cfg, str(victim))
    assert resumed.resumed_from.endswith(f"step_{resumed_step:08d}.pt")
    assert resumed.steps == ref.steps == SAMPLES // BATCH
    expected, got = exported(ref_dir), exported(victim)
    assert expected.keys() == got.keys()
    differing = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not differing, f"resumed at step {resumed_step}: {len(differing)} tensors differ, e.g. {differing[:3]}"
    assert losses(victim) == losses(ref_dir) and len(losses(ref_dir)) == SAMPLES // BATCH
    assert resumed.final_loss == ref.final_loss
    assert ref.resumed == [] and [r["from_step"] for r in resumed.resumed] == [resumed_step]


def test_a_pipeline_train_stage_that_resumes_says_from_which_steps_and_when(shards, tmp_path):
    """Two crashes (checkpoints at steps 6 and 9), then the pipeline's train stage finishes the run in that folder: its
    info lists both resumes, in order, each with a UTC time of this test, and the published run section carries them."""
    import dataclasses
    from datetime import datetime, timezone

    from pipeline.infos import DataInfo, EvalInfo
    from pipeline.overrides import compose_config
    from pipeline.publish import run_section
    from pipeline.registry import RunContext
    from pipeline.stages.train import run as run_train_stage

    out, data_cfg, mix_cfg = tmp_path / "train", data(shards, 0), MixConfig(p=0.5)
    started = datetime.now(timezone.utc).replace(microsecond=0)
    for crash_after in (7, 4):  # 7 batches: crash after step 7, resume from 6; then 4 more: crash after step 10, from 9
        with pytest.raises(Crash):
            train(
                model(),
                recipe(3),
                data_cfg,
                mix_cfg,
                str(out),
                loader_factory=crashing_factory(data_cfg, mix_cfg, crash_after),
            )
    cfg, _ = compose_config(["+experiment=clip_smoke"])
    cfg = dataclasses.replace(cfg, model=model(), train=recipe(3), data=data_cfg, mix=mix_cfg)
    infos = {"data": DataInfo(fingerprint="x")}
    info = run_train_stage(RunContext(cfg, {}, [], infos), str(out))
    assert info.steps == SAMPLES // BATCH and [r["from_step"] for r in info.resumed] == [6, 9]
    times = [datetime.fromisoformat(r["at"]) for r in info.resumed]
    assert all(t.utcoffset().total_seconds() == 0 for t in times)
    assert started <= times[0] <= times[1] <= datetime.now(timezone.utc)
    run = run_section(cfg, {}, [], {**infos, "train": info}, EvalInfo(hash="e"))
    assert run["resumed"] == info.resumed and run["steps"] == SAMPLES // BATCH
