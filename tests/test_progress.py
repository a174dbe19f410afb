"""harness_infra.progress on every long stage, and W&B beside TensorBoard: log lines with count, rate and ETA off a
terminal (a fake clock), a tqdm bar on one, rank 0 only; the recaption stage and an embedding pass report through it;
a W&B offline run holds the same scalars as TensorBoard at the same steps."""

from __future__ import annotations

import glob
import io
import json
import logging
import os

import pytest
import torch
from conftest import require_module
from recaption_helpers import write_input

from captiondata.config import project_layout
from harness_infra.progress import Progress, duration
from recaption.captioner import Caption
from recaption.config import RecaptionConfig
from recaption.stage import recaption_split


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def progress_lines(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == "progress"]


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3725, "1h02m05s")])
def test_durations_read_as_hours_minutes_seconds(seconds, text):
    assert duration(seconds) == text


def test_off_a_terminal_a_line_every_period_with_count_rate_and_eta(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="progress")
    with Progress(
        "features", total=1000, unit="image", every_s=30, enabled=True, stream=io.StringIO(), clock=clock
    ) as progress:
        clock.now += 10
        progress.update(100)  # 10 s after the start: no line yet
        assert progress_lines(caplog) == []
        clock.now += 30
        progress.update(300)  # 400 images in 40 s = 10/s; 600 left = 60 s
        assert progress_lines(caplog) == ["features: 400 / 1,000 images (40.0%), 10.0 images/s, ETA 1m00s"]
        clock.now += 5
        progress.update(50)  # 5 s after the last line: none
        assert len(progress_lines(caplog)) == 1
        clock.now += 55  # 100 s, 1000 images
        progress.update(550)
    lines = progress_lines(caplog)
    assert lines[1] == "features: 1,000 / 1,000 images (100.0%), 10.0 images/s"
    assert lines[2] == "features: 1,000 / 1,000 images (100.0%), 10.0 images/s, done in 1m40s"


def test_an_unknown_total_gives_count_and_rate_and_a_total_can_arrive_later(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="progress")
    progress = Progress("recaption train", unit="image", every_s=1, enabled=True, stream=io.StringIO(), clock=clock)
    clock.now += 4
    progress.update(8)
    progress.set_total(20)
    clock.now += 2
    progress.update(4)
    assert progress_lines(caplog) == [
        "recaption train: 8 images, 2.0 images/s",
        "recaption train: 12 / 20 images (60.0%), 2.0 images/s, ETA 4s",
    ]


def test_other_ranks_and_short_passes_say_nothing(caplog, monkeypatch):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="progress")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with Progress("p", total=10, stream=io.StringIO(), every_s=1, clock=clock) as other_rank:
        clock.now += 5
        other_rank.update(10)
    assert not other_rank.enabled and progress_lines(caplog) == []
    with Progress("p", total=10, enabled=True, stream=io.StringIO(), every_s=30, clock=clock) as short:
        short.update(10)  # done before the first period: no line at all
    assert progress_lines(caplog) == []


def test_on_a_terminal_it_is_a_tqdm_bar_and_no_log_line(caplog):
    stream, clock = Terminal(), Clock()
    caplog.set_level(logging.INFO, logger="progress")
    with Progress("sampling", total=8, unit="image", enabled=True, stream=stream, every_s=0, clock=clock) as progress:
        assert progress.bar is not None
        for _ in range(8):
            clock.now += 1
            progress.update()
    assert progress_lines(caplog) == []
    assert "sampling" in stream.getvalue() and "8/8" in stream.getvalue()


class Named:
    """A captioner that names each sample."""

    identity = {"captioner": "named", "weights_sha256": None}

    def caption(self, items):
        return [Caption(f"caption of {item.key}", tokens=3) for item in items]


def test_the_recaption_stage_reports_images_and_an_estimated_total(tmp_path, caplog, monkeypatch):
    import harness_infra.progress as progress_module

    clock = Clock()

    def ticking() -> float:
        clock.now += 1.0  # one second per clock read: every update is past the period
        return clock.now

    monkeypatch.setattr(progress_module, "now_s", ticking)
    monkeypatch.setattr(progress_module, "EVERY_S", 0.5)
    caplog.set_level(logging.INFO, logger="progress")
    spec = write_input(str(tmp_path / "in"), 9, per_shard=3)
    cfg = RecaptionConfig(name="named", backend="hf", model="x", batch_size=2, num_workers=0)
    assert (
        recaption_split(
            sorted(glob.glob(spec)),
            str(tmp_path / "out"),
            "train",
            cfg,
            project_layout(),
            10**8,
            make_captioner=lambda _cfg: Named(),
        )
        == 3
    )
    lines = progress_lines(caplog)
    counts = [int(line.split(": ")[1].split(" ")[0].replace(",", "")) for line in lines[:-1]]
    assert counts == sorted(counts) and counts[-1] == 9, (
        lines
    )  # per batch: 2, 3, 5, 6, 8, 9 (3 per shard, batches of 2)
    assert "images" in lines[0] and "/" not in lines[0].split(",")[0]  # the first shard: no total yet
    assert any("/ 9 images" in line for line in lines)  # after a shard: 3 per shard x 3 shards
    assert lines[-1].startswith("recaption train: 9 / 9 images (100.0%)") and "done in" in lines[-1]


def test_an_embedding_pass_reports_through_progress(caplog, monkeypatch):
    import harness_infra.progress as progress_module
    from evals.tasks.config import EvalConfig
    from evals.tasks.embeddings import _encode_text_batches

    monkeypatch.setattr(progress_module, "EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="progress")

    class Tower(torch.nn.Module):
        def encode_text(self, tokens):
            return tokens.float()[:, :4] + 1.0

    texts = [f"text {i}" for i in range(10)]

    def tokenizer(batch, context_length):
        return torch.tensor([[len(t), i, 1, 2, 0, 0] for i, t in enumerate(batch)])

    _encode_text_batches(Tower(), tokenizer, texts, 6, EvalConfig(batch_size=4, trim_text_padding=False))
    lines = progress_lines(caplog)
    assert lines and lines[-1].startswith("text embeddings: 10 / 10 texts (100.0%)"), lines


def wandb_records(path: str) -> list:
    """The records of a W&B ``.wandb`` file, read by the format W&B documents for it (LevelDB's log format: a 7-byte
    file header ``:W&B`` + magic + version, then 32 KiB blocks of records, each crc32 + little-endian length + type
    1 full / 2 first / 3 middle / 4 last; a block tail under 7 bytes is padding), checking every crc32."""
    import struct
    import zlib

    with open(path, "rb") as handle:
        blob = handle.read()
    assert blob[:4] == b":W&B", blob[:7]
    records, parts, offset, block = [], [], 7, 32768
    while offset + 7 <= len(blob):
        if block - offset % block < 7:
            offset += block - offset % block
            continue
        crc, length, kind = struct.unpack("<IHB", blob[offset : offset + 7])
        data = blob[offset + 7 : offset + 7 + length]
        if length == 0 and kind == 0:
            break
        assert zlib.crc32(bytes([kind]) + data) & 0xFFFFFFFF == crc, f"bad crc at {offset}"
        parts.append(data)
        if kind in (1, 4):
            records.append(b"".join(parts))
            parts = []
        offset += 7 + length
    return records


def test_wandb_offline_holds_the_tensorboard_scalars(tmp_path, monkeypatch):
    wandb = require_module("wandb", "pip install -e '.[wandb]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_train_clip_train import micro, quick
    from train_helpers import synthetic_factory
    from wandb.proto import wandb_internal_pb2

    from train_clip.config import StageConfig
    from train_clip.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    out_dir = str(tmp_path / "run")
    cfg = quick([StageConfig(image_size=32, samples=96, batch_size=16, lr=1e-3)], wandb_project="recap-test")
    train(micro(), cfg, None, None, out_dir, loader_factory=synthetic_factory(48, seed=0))

    events = EventAccumulator(os.path.join(out_dir, "tensorboard"))
    events.Reload()
    tensorboard = {(e.step, round(e.value, 5)) for e in events.Scalars("train/loss")}
    runs = glob.glob(os.path.join(out_dir, "wandb", "offline-run-*"))
    assert len(runs) == 1, runs
    (data_file,) = glob.glob(os.path.join(runs[0], "*.wandb"))
    logged = set()
    for data in wandb_records(data_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            if "train/loss" in items:
                logged.add((int(items["_step"]), round(items["train/loss"], 5)))
    assert logged and logged == tensorboard
    assert wandb.__version__
