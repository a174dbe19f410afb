"""CoCa in the CLIP trainer (contrastive + captioning loss) and a trained CoCa as the recaption stage's captioner."""

from __future__ import annotations

import glob
import json
import math

import pytest

from captiondata.config import DataConfig, MixConfig, project_layout
from harness_infra.errors import ConfigError
from recaption.config import RecaptionConfig
from recaption.stage import recaption_data
from train_clip.config import ClipModelConfig, StageConfig, TrainConfig
from train_clip.train import train


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from captiondata.build import build_shards

    folder = tmp_path_factory.mktemp("scenes")
    build_shards(
        DataConfig(name="scenes", builder="scenes", shard_dir=str(folder), build_size=96, samples_per_shard=48)
    )
    return str(folder)


def recipe(**kw) -> TrainConfig:
    stage = StageConfig(image_size=64, samples=80, batch_size=8, lr=2e-3, warmup_steps=2)
    return TrainConfig(
        stages=[stage], device="cpu", precision="fp32", progress_bar=False, tensorboard=False, log_every=1, seed=0, **kw
    )


def test_coca_trains_on_the_dense_descriptions_and_its_export_captions_shards(scenes, tmp_path):
    data = DataConfig(name="scenes", builder="scenes", shard_dir=scenes, num_workers=0, build_size=96)
    result = train(
        ClipModelConfig(name="RecapCoCa-nano"),
        recipe(),
        data,
        MixConfig(strategy="recap"),
        out_dir=str(tmp_path / "coca"),
    )
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "coca" / "metrics.jsonl")]
    assert len(losses) == 10 and all(math.isfinite(v) for v in losses)
    assert (
        sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0
    )  # contrastive + captioning loss (about 25 at the start) falls
    cfg = RecaptionConfig(
        name="coca",
        backend="coca",
        model=f"local-dir:{result.export_dir}",
        max_new_tokens=8,
        batch_size=16,
        num_workers=0,
    )
    stats = recaption_data(
        {"train": f"{scenes}/train-000000.tar"}, str(tmp_path / "recap"), cfg, project_layout(), 10**8
    )["train"]
    assert stats["samples"] == 48 and stats["with_recaption"] + stats["failed_total"] == 48
    provenance = [json.loads(m) for m in _members(f"{tmp_path}/recap/train-*.tar", "coca.json")]
    assert (
        provenance[0]["captioner"] == f"coca:local-dir:{result.export_dir}"
        and len(provenance[0]["weights_sha256"]) == 64
    )


def test_coca_with_accumulation_is_refused_in_one_line(scenes, tmp_path):
    data = DataConfig(name="scenes", builder="scenes", shard_dir=scenes, num_workers=0, build_size=96)
    with pytest.raises(ConfigError, match="train.accum_steps=2: CoCa"):
        train(
            ClipModelConfig(name="RecapCoCa-nano"),
            recipe(accum_steps=2),
            data,
            MixConfig(strategy="recap"),
            out_dir=str(tmp_path / "c"),
        )


def _members(spec, suffix):
    import tarfile

    for path in sorted(glob.glob(spec)):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith("." + suffix):
                    yield tar.extractfile(member).read()


def test_the_coca_decoder_is_initialised_reproducibly():
    import torch

    from train_clip.models import create_clip

    first = create_clip(ClipModelConfig(name="RecapCoCa-nano"), 64, torch.device("cpu"), seed=3)
    garbage = torch.full((4096, 4096), 1e30)  # dirty the allocator between the two creations
    del garbage
    second = create_clip(ClipModelConfig(name="RecapCoCa-nano"), 64, torch.device("cpu"), seed=3)
    head = first.text_decoder.text_projection
    assert torch.equal(head, second.text_decoder.text_projection) and float(head.abs().max()) < 1.0
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_cached_greedy_decoding_equals_the_uncached_loop():
    import torch

    from recaption.backends.coca import cached_greedy_generate, greedy_generate
    from train_clip.models import create_clip

    model = create_clip(ClipModelConfig(name="RecapCoCa-nano"), 64, torch.device("cpu"), seed=1).eval()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cached_greedy_generate(model, images, 20), greedy_generate(model, images, 20))
