"""The experiment runner end to end (smoke), its stage cache, and tables from fixture records."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pandas as pd
import pytest
from eval_helpers import publish_retrieval
from PIL import Image

from evals.results.bootstrap import QueryValues
from evals.results.records import write_record
from harness_infra.errors import ConfigError
from pipeline.cli import main
from report.tables import write_tables

SMALL = [
    "+experiment=clip_smoke",
    "data.build_size=200",
    "train.stages.0.samples=128",
    "train.stages.0.batch_size=32",
    "eval.tasks.0.max_samples=120",
    "eval.tasks.1.max_samples=120",
    "eval.bootstrap_samples=50",
    "eval.permutation_samples=200",
]


def stage_lines(capsys) -> dict:
    """Stage -> 'skipped' or 'running' from the runner's log (Hydra's job logging writes it to stderr)."""
    return stage_lines_of(capsys.readouterr().err)


def stage_lines_of(err: str) -> dict:
    """Stage -> 'skipped' or 'running' from log text."""
    out = {}
    for message in err.splitlines():
        for stage in ("data", "train", "eval"):
            if f"] {stage}:" in message:
                out[stage] = "skipped" if message.endswith("skipped") else "running"
    return out


def naive_t2i_recall_at_1(root, n_images: int) -> float:
    """Text->image R@1 of the trained export, computed here without the evaluation suite: open_clip's own loader,
    forward passes and an argmax over cosine similarities of the first ``n_images`` test scenes' reference captions."""
    import torch
    import torch.nn.functional as F

    from captiondata.config import project_layout
    from captiondata.reader import iter_samples
    from train_clip.models import load_for_eval

    export = glob.glob(f"{root}/runs/train/*/export")[0]
    model, tokenizer, preprocess = load_for_eval(export)
    shards = sorted(glob.glob(f"{root}/runs/data/*/test-*.tar"))
    records = [r for _, r in zip(range(n_images), iter_samples(shards, project_layout()))]
    texts = [(i, c) for i, r in enumerate(records) for c in r.references]
    with torch.no_grad():
        images = F.normalize(model.encode_image(torch.stack([preprocess(r.image) for r in records])), dim=-1)
        captions = F.normalize(model.encode_text(tokenizer([c for _, c in texts])), dim=-1)
    best = (captions @ images.T).argmax(dim=1)
    return float((best == torch.tensor([i for i, _ in texts])).float().mean())


def epochs_of(root, label: str) -> list:
    """The epoch reports of the train stage folder whose label contains ``label``."""
    folder = next(d for d in glob.glob(f"{root}/runs/train/*{label}*") if os.path.isdir(d))
    return [json.loads(line) for line in open(f"{folder}/epochs.jsonl")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    return [f"run.out_root={root}/runs", f"run.results_dir={root}/results"], root


def test_smoke_end_to_end_then_cached(workspace, capsys):
    where, root = workspace
    assert main(SMALL + where) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"table: {root}/results/scenes.md"
    assert stage_lines_of(captured.err) == {"data": "running", "train": "running", "eval": "running"}
    records = sorted(glob.glob(f"{root}/results/records/*.json"))
    assert [os.path.basename(r).split("__")[1] for r in records] == [
        "scenes_compositional_retrieval",
        "scenes_heldout_retrieval",
        "scenes_zeroshot",
    ]
    record = json.load(open(records[0]))
    run = record["run"]
    assert run["p"] == 0.5 and run["samples_seen"] == 128 and run["global_batch"] == [32]
    assert (
        run["git"].keys() == {"commit", "dirty"}
        and run["packages"]["torch"]
        and set(run["wall_time_s"]) == {"data", "train", "eval"}
    )
    assert run["command"].startswith("python -m evals.run +experiment=clip_smoke")
    assert record["n"]["images"] == 120
    assert record["metrics"]["t2i_R@1"] == pytest.approx(naive_t2i_recall_at_1(root, 120), abs=1e-6)
    assert os.path.isfile(f"{root}/results/scenes_scenes_zeroshot.png")

    assert main(SMALL + where) == 0
    assert stage_lines(capsys) == {"data": "skipped", "train": "skipped", "eval": "skipped"}
    assert len(glob.glob(f"{root}/results/records/*.json")) == 3

    assert main(SMALL + where + ["mix.p=1.0"]) == 0
    assert stage_lines(capsys) == {"data": "skipped", "train": "running", "eval": "running"}
    table = open(f"{root}/results/scenes.md").read()
    realised = run["realised_p"]  # the share of trained texts that were the original, shown beside the label
    assert 0 < realised < 1 and realised == pytest.approx(
        sum(round(e["original_fraction"] * e["samples"]) for e in epochs_of(root, "p0.5"))
        / sum(e["samples"] for e in epochs_of(root, "p0.5"))
    )
    assert (
        f"| mix        | full        | 0.5 (realised {realised:.4f}) |" in table
        and "| mix        | full        | 1                     |" in table
    )

    assert main(SMALL + where + ["mix.p=1.0", "run.rerun=eval"]) == 0
    assert stage_lines(capsys) == {"data": "skipped", "train": "skipped", "eval": "running"}
    assert len(glob.glob(f"{root}/results/records/*.json")) == 9  # the re-evaluation is published beside, never over


def test_a_sweep_over_training_seeds_is_one_table_row_with_a_seed_level_interval(tmp_path):
    where = [f"run.out_root={tmp_path}/runs", f"run.results_dir={tmp_path}/results"]
    assert main(["-m", *SMALL, "train.seed=0,1", *where]) == 0
    records = [json.load(open(r)) for r in sorted(glob.glob(f"{tmp_path}/results/records/*.json"))]
    assert len(records) == 6 and {r["run"]["seed"] for r in records} == {0, 1}
    assert len({r["run"]["train_hash"] for r in records}) == 2  # two trained models ...
    assert len({r["run"]["recipe_hash"] for r in records}) == 1  # ... of one recipe
    table = open(f"{tmp_path}/results/scenes.md").read()
    rows = [line for line in table.splitlines() if line.startswith("| RecapCLIP")]
    assert len(rows) == 1 and "| 0, 1 " in rows[0]
    csv = pd.read_csv(f"{tmp_path}/results/scenes.csv")
    assert set(csv["n_seeds"]) == {2} and all(m.startswith("mean over training seeds") for m in csv["interval"])


def test_relative_out_root_gives_absolute_eval_paths(tmp_path, monkeypatch):
    import dataclasses

    from pipeline.infos import DataInfo
    from pipeline.overrides import compose_config
    from pipeline.registry import RunContext, stages
    from pipeline.runner import run_cached
    from pipeline.stages.data import shard_dir
    from pipeline.stages.eval import resolve_task_paths

    monkeypatch.chdir(tmp_path)
    cfg, _ = compose_config(["+experiment=clip_smoke", "run.out_root=cache/runs"])
    fake = dataclasses.replace(
        stages()["data"], run=lambda ctx, out_dir: DataInfo(fingerprint="x", extra={"shard_dir": "cache/relative"})
    )
    info = run_cached(RunContext(cfg, {}, []), fake, "[1/4]")
    assert shard_dir(info) == info.out_dir and os.path.isabs(info.out_dir) and info.out_dir.startswith(str(tmp_path))
    assert all(
        os.path.isabs(t.resolved_path()) and t.resolved_path().startswith(str(tmp_path))
        for t in resolve_task_paths(cfg, info)
    )
    # read back from the marker (a cwd-relative shard_dir in it, as older versions wrote): the stage's own folder wins
    again = run_cached(RunContext(cfg, {}, []), fake, "[1/4]")
    assert shard_dir(again) == info.out_dir


TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]  # matplotlib's C0..C3


def png_rgb(path) -> np.ndarray:
    """H x W x 3 uint8 pixels of a PNG, decoded by PIL (fails on anything that is not a PNG)."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def colour_pixels(pixels: np.ndarray, colour) -> np.ndarray:
    """H x W mask of the pixels exactly of ``colour``."""
    return (pixels == np.asarray(colour, dtype=pixels.dtype)).all(axis=-1)


def fixture_record(
    folder: str, p: float, strategy: str, hits: np.ndarray, label: str, model: str = "tiny", git=None
) -> None:
    """A published retrieval record with a run section and per-query hits (and the run's git provenance if given)."""
    run = {"experiment": label, "p": p, "strategy": strategy, "model": model, "train_hash": label}
    run["command"] = f"python -m evals.run +experiment={label}"
    publish_retrieval(folder, hits, label, {**run, **({"git": git} if git is not None else {})})


def test_tables_from_fixture_records(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.3
    better = base | (rng.random(400) < 0.3)  # strictly more hits on the same queries
    fixture_record(str(tmp_path), 1.0, "mix", base, "clip_mix_1.0")
    fixture_record(str(tmp_path), 0.5, "mix", better, "clip_mix_0.5")
    fixture_record(str(tmp_path), 0.8, "mix", base, "clip_mix_0.8")
    fixture_record(str(tmp_path), 0.8, "concat", base, "clip_concat")
    path = write_tables(str(tmp_path))
    assert path == str(tmp_path / "toy.md")
    table = open(path).read()
    delta = 100 * (better.mean() - base.mean())
    assert f"(+{delta:.1f})" in table  # one seed per row: the difference, never a star (no test at the seed level)
    assert "*" not in table.split("Produced by")[0].split("|", 1)[1]
    assert "(+0.0)" in table  # identical hits: zero delta
    lines = [line for line in table.splitlines() if line.startswith("| tiny")]
    assert [line.split("|")[2].strip() for line in lines] == ["mix", "mix", "mix", "concat"]
    assert "python -m evals.run +experiment=clip_mix_0.5" in table
    csv = pd.read_csv(tmp_path / "toy.csv")  # the table's rows: one per (recipe, metric)
    assert (
        len(csv) == 4 * 4
        and set(csv["n_seeds"]) == {1}
        and set(csv["interval"]) == {"query-only interval of the one seed's record"}
    )
    runs = open(tmp_path / "toy_runs.csv").read().splitlines()  # one row per (run, metric)
    assert runs[0].startswith("data,model,experiment,strategy,p") and len(runs) == 1 + 4 * 4
    pixels = png_rgb(tmp_path / "toy_toy_retrieval.png")
    assert pixels.shape == (504, 1008, 3)  # 8.4 x 4.2 inches at 120 dpi
    assert all(colour_pixels(pixels, c).sum() > 100 for c in TAB10[:4])  # a curve per metric, each in its own colour


def test_two_models_get_their_own_baselines_and_plots(tmp_path):
    rng = np.random.default_rng(1)
    weak, strong = rng.random(300) < 0.1, rng.random(300) < 0.6
    fixture_record(str(tmp_path), 1.0, "mix", weak, "tiny_1.0", model="tiny")
    fixture_record(str(tmp_path), 0.5, "mix", weak, "tiny_0.5", model="tiny")
    fixture_record(str(tmp_path), 1.0, "mix", strong, "lit_1.0", model="lit")
    fixture_record(str(tmp_path), 0.5, "mix", strong, "lit_0.5", model="lit")
    table = open(write_tables(str(tmp_path))).read()
    assert table.count("(+0.0)") == 2 * 4  # each p = 0.5 run is compared with its own model's p = 1 run
    assert {f for f in os.listdir(tmp_path) if f.endswith(".png")} == {
        "toy_toy_retrieval_tiny.png",
        "toy_toy_retrieval_lit.png",
    }


@pytest.mark.parametrize(
    "overrides,strategy,p",
    [(["+experiment=flickr8k_lit_mix", f"mix.p={p}"], "mix", p) for p in (0.0, 0.2, 0.5, 0.8, 1.0)]
    + [(["+experiment=flickr8k_lit_concat"], "concat", None)],
)
def test_lit_experiments_compose_to_locked_cached_towers(overrides, strategy, p):
    from pipeline.infos import DataInfo
    from pipeline.overrides import compose_config
    from pipeline.registry import RunContext
    from pipeline.stages.train import key

    cfg, _ = compose_config(overrides)
    assert cfg.model.tower is not None and cfg.model.tower.lock_image and not cfg.model.tower.lock_text
    assert cfg.train.frozen_image_features and cfg.eval.trunk_feature_cache and cfg.data.name == "flickr8k"
    assert cfg.mix.strategy == strategy and (p is None or cfg.mix.p == p)
    assert (
        "feature_cache_dir" not in key(RunContext(cfg, {}, [], {"data": DataInfo(fingerprint="x")}))["train"]
    )  # where features live never retrains
    with pytest.raises(ConfigError, match="model.tower.image_size"):
        compose_config([*overrides, "model.tower.image_size=0"])


def test_a_task_scored_on_two_versions_of_its_data_gets_separate_columns_and_a_note(tmp_path):
    """Runs re-evaluated after their eval set was rebuilt: each version keeps its own columns, deltas and plot; one
    pivot cell per (run, column) would otherwise show whichever record came first, and a column would mix sets."""
    rng = np.random.default_rng(3)
    old, new = rng.random(300) < 0.2, rng.random(300) < 0.6
    for label, p, hits, version in (
        ("a_1.0", 1.0, old, "a" * 8),
        ("a_0.5", 0.5, old, "a" * 8),
        ("b_1.0", 1.0, new, "b" * 8),
        ("b_0.5", 0.5, new, "b" * 8),
    ):
        fixture_record(str(tmp_path), p, "mix", hits, label)
        path = tmp_path / "records" / f"{label}.json"
        record = json.loads(path.read_text())
        record["dataset"]["fingerprint"] = version
        record["run"]["train_hash"] = f"run{p}"  # the same two trained runs, each evaluated on both versions
        record["model"] = {"weights_id": f"w{p}"}
        path.write_text(json.dumps(record))
    table = open(write_tables(str(tmp_path))).read()
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert "toy_retrieval@aaaaaaaa i2t_R@1" in header and "toy_retrieval@bbbbbbbb i2t_R@1" in header
    rows = [line for line in table.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 2 and all(f"{100 * old.mean():.1f} [" in r and f"{100 * new.mean():.1f} [" in r for r in rows)
    assert (
        "Note: toy_retrieval was scored on 2 versions of its data set (aaaaaaaa: n = 300, bbbbbbbb: n = 300)" in table
    )
    assert table.count("(+0.0)") == 2 * 4  # p = 0.5 against the p = 1 run on the same version only
    assert {f for f in os.listdir(tmp_path) if f.endswith(".png")} == {
        "toy_toy_retrieval@aaaaaaaa.png",
        "toy_toy_retrieval@bbbbbbbb.png",
    }
    csv = pd.read_csv(tmp_path / "toy.csv")
    assert set(csv["task"]) == {"toy_retrieval"} and set(csv["table_task"]) == {
        "toy_retrieval@aaaaaaaa",
        "toy_retrieval@bbbbbbbb",
    }
    # a record without a dataset section is a version of its own ("unknown"), never merged into a known one
    fixture_record(str(tmp_path), 0.8, "mix", old, "c_0.8")
    path = tmp_path / "records" / "c_0.8.json"
    record = json.loads(path.read_text())
    del record["dataset"]
    path.write_text(json.dumps(record))
    table = open(write_tables(str(tmp_path))).read()
    assert (
        "(aaaaaaaa: n = 300, bbbbbbbb: n = 300, unknown: n = 300)" in table and "toy_retrieval@unknown i2t_R@1" in table
    )


def test_each_seed_is_compared_with_the_p1_run_of_its_own_seed(tmp_path):
    rng = np.random.default_rng(2)
    base0, base1 = rng.random(300) < 0.2, rng.random(300) < 0.5
    fixture_record(str(tmp_path), 1.0, "mix", base0, "s0_1.0")
    fixture_record(str(tmp_path), 0.5, "mix", base0, "s0_0.5")
    for label, p in (("s1_1.0", 1.0), ("s1_0.5", 0.5)):
        fixture_record(str(tmp_path), p, "mix", base1, label)
        path = tmp_path / "records" / f"{label}.json"
        record = json.loads(path.read_text())
        record["run"]["seed"] = 1
        path.write_text(json.dumps(record))
    table = open(write_tables(str(tmp_path))).read()
    assert table.count("(+0.0)") == 2 * 4  # against seed 1's own p = 1 run the delta would be about +30 otherwise
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| tiny")]
    assert [(r[4].strip(), r[5].strip()) for r in rows] == [("0.5", "0"), ("0.5", "1"), ("1", "0"), ("1", "1")]


def seeded_fixture(folder: str, p: float, seed: int, hits: np.ndarray, strategy: str = "mix") -> None:
    """A run of recipe ``mix{p}`` at training seed ``seed`` (its own weights and train hash)."""
    label = f"p{p}_s{seed}"
    fixture_record(folder, p, strategy, hits, label)
    path = os.path.join(folder, "records", f"{label}.json")
    record = json.loads(open(path).read())
    record["run"].update(seed=seed, recipe_hash=f"mix{p}")
    open(path, "w").write(json.dumps(record))


def test_seeds_of_one_recipe_are_one_row_with_a_seed_level_interval_and_test(tmp_path):
    from evals.results.bootstrap import QueryValues
    from evals.results.seeds import seed_difference, seed_estimate

    rng = np.random.default_rng(7)
    hits = {}
    for seed in (0, 1, 2):
        base = rng.random(400) < 0.3 + 0.02 * seed  # the seed moves the hit rate
        hits[1.0, seed] = base
        hits[0.5, seed] = base | (rng.random(400) < 0.4)  # every seed: many more hits on the same queries
        seeded_fixture(str(tmp_path), 1.0, seed, hits[1.0, seed])
        seeded_fixture(str(tmp_path), 0.5, seed, hits[0.5, seed])
    seeded_fixture(str(tmp_path), 0.8, 0, hits[0.5, 0])  # one seed only
    table = open(write_tables(str(tmp_path))).read()
    header = [c.strip() for c in next(line for line in table.splitlines() if line.startswith("| model")).split("|")]
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| tiny")]
    assert [(r[4].strip(), r[5].strip()) for r in rows] == [("0.5", "0, 1, 2"), ("0.8", "0"), ("1", "0, 1, 2")]
    column = header.index("toy_retrieval i2t_R@1")
    runs = lambda p: {s: QueryValues(hits[p, s].astype(float)) for s in (0, 1, 2)}  # noqa: E731
    expected = seed_estimate(list(runs(0.5).values()))
    mean = np.mean([hits[0.5, s].mean() for s in (0, 1, 2)])
    assert expected.value == pytest.approx(mean)
    difference = seed_difference(runs(0.5), runs(1.0))
    assert difference.p_value < 0.05
    cell = f"{100 * mean:.1f} [{100 * expected.interval[0]:.1f}, {100 * expected.interval[1]:.1f}] (+{100 * difference.value:.1f}*)"
    assert rows[0][column].strip() == cell
    # the one-seed row: its record's interval, the difference against the p = 1 run of its seed, and no star
    one = hits[0.5, 0].mean()
    base_mean = hits[1.0, 0].mean()  # the p = 1 run of the same seed
    assert (
        rows[1][column].strip()
        == f"{100 * one:.1f} [{100 * one - 1:.1f}, {100 * one + 1:.1f}] (+{100 * (one - base_mean):.1f})"
    )
    csv = pd.read_csv(tmp_path / "toy.csv")
    assert set(csv[csv["p"] == 0.5]["delta_method"]) == {difference.method}
    assert set(csv[csv["p"] == 0.8]["interval"]) == {"query-only interval of the one seed's record"}


def test_the_recipe_is_the_train_key_without_the_seed():
    from pipeline.infos import DataInfo
    from pipeline.overrides import compose_config
    from pipeline.registry import RunContext
    from pipeline.stages.train import key, recipe_hash

    def context(*overrides):
        cfg, _ = compose_config(["+experiment=clip_mix", *overrides])
        return RunContext(cfg, {}, [], {"data": DataInfo(fingerprint="x")})

    assert recipe_hash(context("train.seed=0")) == recipe_hash(context("train.seed=3"))
    assert key(context("train.seed=0")) != key(context("train.seed=3"))  # two seeds train two models
    assert recipe_hash(context("mix.p=0.5")) != recipe_hash(context("mix.p=0.8"))
    assert recipe_hash(context("train.weight_decay=0.123")) != recipe_hash(context())


def test_whole_set_metrics_get_a_plain_delta_and_no_significance():
    from report.tables import delta_vs_baseline

    base = {"metrics": {"fid": 36.2, "t2i_R@1": 0.2}, "whole_set_interval_methods": {"fid": "bootstrap over images"}}
    run = {"metrics": {"fid": 27.8, "t2i_R@1": 0.3}, "whole_set_interval_methods": {"fid": "bootstrap over images"}}
    assert delta_vs_baseline(run, base, "fid", None) == pytest.approx(27.8 - 36.2)
    assert delta_vs_baseline(run, base, "t2i_R@1", None) is None  # a per-query metric needs its paired test
    assert delta_vs_baseline(base, base, "fid", None) == 0.0 and delta_vs_baseline(run, None, "fid", None) is None


def test_each_command_is_listed_with_the_commit_whose_defaults_it_ran_under(tmp_path):
    rng = np.random.default_rng(1)
    fixture_record(
        str(tmp_path),
        1.0,
        "mix",
        rng.random(50) < 0.3,
        "clip_mix_1.0",
        git={"commit": "1301e08" + "a" * 33, "dirty": False},
    )
    fixture_record(
        str(tmp_path),
        0.5,
        "mix",
        rng.random(50) < 0.3,
        "clip_mix_0.5",
        git={"commit": "11892df" + "b" * 33, "dirty": True},
    )
    fixture_record(
        str(tmp_path), 0.8, "mix", rng.random(50) < 0.3, "clip_mix_0.8"
    )  # a record from before git provenance
    table = open(write_tables(str(tmp_path))).read()
    assert "    python -m evals.run +experiment=clip_mix_1.0    # at commit 1301e08\n" in table
    assert "    python -m evals.run +experiment=clip_mix_0.5    # at commit 11892df + uncommitted changes\n" in table
    assert "    python -m evals.run +experiment=clip_mix_0.8\n" in table


def t2i_fixture_records(folder: str, p: float, fid: float, kid: float, scores: np.ndarray, label: str) -> None:
    """A published DiT run: a FID/KID record (whole-set metrics) and a CLIP-score record (per-prompt values, 0-100)."""
    run = {
        "experiment": label,
        "p": p,
        "strategy": "mix",
        "model": "DiT-tiny",
        "data": "toy",
        "samples_seen": 100,
        "global_batch": [10],
        "train_hash": label,
        "eval_hash": "e",
        "command": f"python -m evals.run +experiment={label}",
    }
    common = {
        "dataset": {"fingerprint": "f" * 8},
        "created": "2026-01-01T00:00:00+00:00",
        "checkpoint": label,
        "run": run,
    }
    fid_record = {
        **common,
        "task": "fid",
        "task_name": "toy_raw_fid",
        "metrics": {"fid": fid, "kid": kid},
        "intervals": {"fid": [fid - 2.0, fid + 3.0], "kid": [kid - 0.001, kid + 0.002]},
        "n": {"images": 50},
        "whole_set_interval_methods": {"fid": "basic bootstrap over generated images", "kid": "subsets"},
    }
    write_record(fid_record, os.path.join(folder, "records"), {}, stem=f"{label}_fid")
    clip_record = {
        **common,
        "task": "clip_score",
        "task_name": "toy_recap_clip",
        "metrics": {"clip_score": float(scores.mean())},
        "intervals": {"clip_score": [float(scores.mean()) - 0.5, float(scores.mean()) + 0.5]},
        "n": {"images": len(scores)},
    }
    write_record(
        clip_record, os.path.join(folder, "records"), {"clip_score": QueryValues(scores)}, stem=f"{label}_clip"
    )


def test_text_to_image_runs_get_their_own_table_in_their_own_units(tmp_path):
    rng = np.random.default_rng(5)
    base = 20.0 + 5.0 * rng.random(300)
    better = base + 2.0 + rng.random(300)  # the same prompts and seeds, every image scored higher
    t2i_fixture_records(str(tmp_path), 1.0, 48.25, 0.0125, base, "dit_1.0")
    t2i_fixture_records(str(tmp_path), 0.0, 41.5, 0.0100, better, "dit_0.0")
    fixture_record(
        str(tmp_path), 1.0, "mix", rng.random(100) < 0.3, "clip_mix_1.0"
    )  # a CLIP on the same data: another table
    path = write_tables(str(tmp_path), "toy", "t2i")
    assert path == str(tmp_path / "toy_t2i.md") and os.path.exists(tmp_path / "toy.md")
    table = open(path).read()
    assert (
        "text-to-image DiT" in table
        and "toy_retrieval" not in table
        and "toy_raw_fid" not in open(tmp_path / "toy.md").read()
    )
    assert "48.25 [46.25, 51.25]" in table  # FID in its own unit, not x100
    assert "41.5 [39.5, 44.5] (-6.75)" in table  # whole-set metric: plain difference, no significance star
    assert "0.0125 [0.0115, 0.0145]" in table
    delta = float((better - base).mean())
    assert f"(+{delta:.4g})" in table  # CLIP score: one seed, so the difference without a star
    assert "lower is better for fid, kid" in table
    pixels = png_rgb(tmp_path / "toy_t2i_toy_raw_fid.png")
    assert pixels.shape == (504, 1344, 3)  # one panel per unit (FID, KID): (4.6 x 2 + 2) x 4.2 inches at 120 dpi
    fid_panel, kid_panel = np.split(colour_pixels(pixels, TAB10[0]), 2, axis=1)
    assert fid_panel.sum() > 100 and kid_panel.sum() > 100  # a curve in each
    assert "(for a generator" not in open(tmp_path / "toy.md").read()  # the CLIP table keeps its own words


def test_an_interval_that_does_not_hold_its_point_is_still_plotted(tmp_path):
    """A percentile bootstrap of a biased statistic (FID) can lie wholly above its point: the plot draws the interval
    from its ends instead of failing on negative error bars."""
    scores = np.random.default_rng(6).random(50)
    t2i_fixture_records(str(tmp_path), 1.0, 48.0, 0.01, scores, "dit_1.0")
    path = tmp_path / "records" / "dit_1.0_fid.json"
    record = json.loads(path.read_text())
    record["intervals"]["fid"] = [50.0, 55.0]
    path.write_text(json.dumps(record))
    write_tables(str(tmp_path), "toy", "t2i")
    pixels = png_rgb(tmp_path / "toy_t2i_toy_raw_fid.png").astype(int)
    blue = (pixels[..., 2] - pixels[..., 0] > 60)[:, : pixels.shape[1] // 2]  # C0 and its anti-aliased edges, FID panel
    rows = np.nonzero(blue[:, np.bincount(np.nonzero(blue)[1]).argmax()])[0]  # the column of the point and its bar
    # the interval [50, 55] (its bar and end caps) spans most of the axes' height above the marker at 48, with a gap between
    assert rows.max() - rows.min() > 250 and rows.size < rows.max() - rows.min() + 1, (
        rows.min(),
        rows.max(),
        rows.size,
    )


def test_budgets_are_separate_curves_and_equal_metrics_stay_visible(tmp_path):
    from report.tables import load_records, metric_rows, plot_series, seed_rows, separate_data_versions

    rng = np.random.default_rng(3)
    for label, p, budget in (
        ("full_1.0", 1.0, 80000),
        ("full_0.5", 0.5, 80000),
        ("smoke_1.0", 1.0, 512),
        ("smoke_0.5", 0.5, 512),
    ):
        fixture_record(str(tmp_path), p, "mix", rng.random(200) < 0.4, label)
        path = tmp_path / "records" / f"{label}.json"
        record = json.loads(path.read_text())
        record["run"]["samples_seen"] = budget
        path.write_text(json.dumps(record))
    long = seed_rows(separate_data_versions(metric_rows(load_records(str(tmp_path))))[0])
    series = plot_series(long[long["task"] == "toy_retrieval"])
    assert len(series) == 4 * 2  # 4 metrics x 2 budgets: the smoke run never joins the full run's curve
    for curve in series:
        rows = long[(long["metric"] == curve["metric"]) & (long["samples_seen"] == curve["samples_seen"])].sort_values(
            "p"
        )
        assert curve["y"] == pytest.approx((rows["value"] * 100).tolist())
        assert f"{curve['samples_seen']:,} samples" in curve["label"]
    # all four metrics hold the same values here (one hit vector): each metric is dodged to its own x positions
    xs = {tuple(c["x"]) for c in series if c["samples_seen"] == 512}
    assert len(xs) == 4
    table = open(write_tables(str(tmp_path))).read()
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| tiny")]
    assert [r[6].strip() for r in rows] == ["512", "512", "80000", "80000"]  # grouped by budget


def test_identical_results_of_a_rerun_collapse_into_one_row(tmp_path):
    from report.tables import load_records

    hits = np.random.default_rng(4).random(100) < 0.5
    for label, created in (("first", "2026-01-01T00:00:00+00:00"), ("rerun", "2026-02-01T00:00:00+00:00")):
        fixture_record(str(tmp_path), 1.0, "mix", hits, label)
        path = tmp_path / "records" / f"{label}.json"
        record = json.loads(path.read_text())
        record["model"] = {"weights_id": "w" * 64}  # bitwise-identical weights, another config (train) hash
        record["created"] = created
        path.write_text(json.dumps(record))
    records = load_records(str(tmp_path))
    assert len(records) == 1 and records[0]["run"]["train_hash"] == "rerun"
    # the same weights in another table (p = 1 on a recaptioned copy of the data) stay a row of that table
    path = tmp_path / "records" / "first.json"
    record = json.loads(path.read_text())
    record["run"]["data"] = "toy_recaptioned"
    path.write_text(json.dumps(record))
    assert sorted(r["run"]["data"] for r in load_records(str(tmp_path))) == ["toy", "toy_recaptioned"]


def test_user_runs_publish_outside_the_committed_study():
    from pipeline.overrides import compose_config

    cfg, _ = compose_config(["+experiment=clip_mix_0.8"])
    results = cfg.run.results_dir
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ignored = [line.strip().strip("/") for line in open(os.path.join(root, ".gitignore")) if line.strip()]
    assert results.split("/")[0] in ignored and not results.startswith("results")


def test_stage_keys_follow_inputs_edited_in_place(tmp_path):
    """User shards rewritten in place (same size, mtime restored) and an outside eval set with an edited label both
    change the keys that decide whether a stage runs again."""
    import dataclasses as dc

    from eval_helpers import write_cb_classification

    from captiondata.config import DataConfig
    from evals.tasks.config import task_config
    from pipeline.infos import DataInfo, TrainInfo
    from pipeline.overrides import compose_config
    from pipeline.registry import RunContext
    from pipeline.stages.data import user_shard_fingerprint
    from pipeline.stages.eval import key as eval_key

    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(b"a" * 1024)
    data = DataConfig(builder="none", train_shards=str(shard))
    before = user_shard_fingerprint(data)["fingerprint"]
    stat = os.stat(shard)
    shard.write_bytes(b"b" * 1024)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert user_shard_fingerprint(data)["fingerprint"] != before

    root = write_cb_classification(
        str(tmp_path / "cls"), [0, 1, 0, 1], ["ant", "bee"], ["a photo of a {c}."], per_shard=4
    )
    cfg, _ = compose_config(["+experiment=clip_smoke"])
    task = task_config(name="outside", task="zeroshot_classification", format="clip_benchmark_wds", path=root)
    cfg = dc.replace(cfg, eval=dc.replace(cfg.eval, tasks=[task]))
    infos = {"data": DataInfo(fingerprint="x", out_dir=str(tmp_path / "data")), "train": TrainInfo(hash="t")}
    first = eval_key(RunContext(cfg, {}, [], infos))
    tar = os.path.join(root, "test", "0.tar")
    blob = open(tar, "rb").read()
    data_at = (blob.index(b"s000000.cls") // 512 + 1) * 512  # the member's data starts at the block after its header
    assert blob[data_at : data_at + 1] == b"0"
    edited = blob[:data_at] + b"1" + blob[data_at + 1 :]  # label 0 -> 1, same size (tar members are padded)
    with open(tar, "wb") as handle:
        handle.write(edited)
    assert os.path.getsize(tar) == len(blob)
    assert eval_key(RunContext(cfg, {}, [], infos)) != first


def test_a_retrained_evaluator_changes_the_eval_key(tmp_path):
    """A CLIP-score evaluator named by a glob enters the eval stage key by the content of its export folder."""
    import dataclasses as dc

    from evals.tasks.config import task_config
    from pipeline.infos import DataInfo, TrainInfo
    from pipeline.overrides import compose_config
    from pipeline.registry import RunContext
    from pipeline.stages.eval import key as eval_key

    export = tmp_path / "train" / "clip_mix_p0.0-abc" / "export"
    export.mkdir(parents=True)
    (export / "open_clip_pytorch_model.bin").write_bytes(b"weights one")
    data_dir = tmp_path / "data"
    task = task_config(
        name="recap_clip",
        task="clip_score",
        format="project_shards",
        path=f"{data_dir}/test-*.tar",
        evaluator=str(tmp_path / "train" / "clip_mix_p0.0-*" / "export"),
    )
    cfg, _ = compose_config(["+experiment=clip_smoke"])
    cfg = dc.replace(cfg, eval=dc.replace(cfg.eval, tasks=[task]))
    infos = {"data": DataInfo(fingerprint="x", out_dir=str(data_dir)), "train": TrainInfo(hash="t")}
    first = eval_key(RunContext(cfg, {}, [], infos))
    (export / "open_clip_pytorch_model.bin").write_bytes(b"weights two")  # same size, retrained
    assert eval_key(RunContext(cfg, {}, [], infos)) != first


def test_an_evaluator_named_by_experiment_is_its_export_under_out_root(tmp_path):
    """evaluator_experiment resolves to the one complete train stage of that experiment under run.out_root; the eval key
    holds the name and the export's content (not the folder), and none or several runs are a one-line ConfigError."""
    import dataclasses as dc
    import json as _json

    from evals.tasks.config import task_config
    from evals.tasks.t2i import experiment_export, resolve_evaluator
    from harness_infra.errors import ConfigError
    from pipeline.infos import DataInfo, TrainInfo
    from pipeline.overrides import compose_config
    from pipeline.registry import RunContext
    from pipeline.stages.eval import key as eval_key

    def trained(root, digest, weights):
        folder = root / "train" / f"clip_mix_p0.0-{digest}"
        (folder / "export").mkdir(parents=True)
        (folder / "export" / "open_clip_model.safetensors").write_bytes(weights)
        (folder / "_COMPLETE.json").write_text(_json.dumps({}))
        return folder

    data_dir = tmp_path / "data"
    task = task_config(
        name="recap_clip", task="clip_score", path=f"{data_dir}/test-*.tar", evaluator_experiment="clip_mix_p0.0"
    )
    base, _ = compose_config(["+experiment=clip_smoke"])
    infos = {"data": DataInfo(fingerprint="x", out_dir=str(data_dir)), "train": TrainInfo(hash="t")}

    def key_under(root):
        cfg = dc.replace(base, eval=dc.replace(base.eval, tasks=[task]), run=dc.replace(base.run, out_root=str(root)))
        return eval_key(RunContext(cfg, {}, [], infos))

    with pytest.raises(ConfigError, match=r"evaluator_experiment=clip_mix_p0.0: no complete train stage"):
        key_under(tmp_path / "a")
    folder = trained(tmp_path / "a", "0123456789abcdef", b"weights one")
    (tmp_path / "a" / "train" / "clip_mix_p0.0-fedcba9876543210" / "export").mkdir(
        parents=True
    )  # no marker: unfinished
    (tmp_path / "a" / "train" / "clip_mix_p0.0_x-0123456789abcdef").mkdir()  # another experiment's label
    assert experiment_export(str(tmp_path / "a"), "clip_mix_p0.0") == str(folder / "export")
    assert resolve_evaluator(task, str(tmp_path / "a")).evaluator == str(folder / "export")
    first = key_under(tmp_path / "a")
    trained(tmp_path / "b", "0123456789abcdef", b"weights one")
    assert key_under(tmp_path / "b") == first  # moving run.out_root changes nothing
    (folder / "export" / "open_clip_model.safetensors").write_bytes(b"weights two")  # retrained
    assert key_under(tmp_path / "a") != first
    trained(tmp_path / "a", "00000000000000aa", b"weights three")
    with pytest.raises(ConfigError) as info:
        key_under(tmp_path / "a")
    assert "2 trained runs" in str(info.value) and "\n" not in str(info.value)


def test_caption_reductions_are_rows_of_their_own_against_the_whole_caption_baseline(tmp_path):
    from report.rows import seed_rows
    from report.tables import load_records, metric_rows, plot_series, separate_data_versions

    rng = np.random.default_rng(4)
    base, better = rng.random(300) < 0.2, rng.random(300) < 0.5
    fixture_record(str(tmp_path), 1.0, "mix", base, "full_1.0")  # published before reductions: no reduction_label
    fixture_record(str(tmp_path), 0.5, "mix", base, "full_0.5")
    for label, p, reduction in (("sub_0.5", 0.5, "recap sub_caption K=1"), ("trunc_1.0", 1.0, "original truncate K=8")):
        fixture_record(str(tmp_path), p, "mix", better, label)
        path = tmp_path / "records" / f"{label}.json"
        record = json.loads(path.read_text())
        record["run"].update(reduction_label=reduction, reduction={"reduced": True})
        path.write_text(json.dumps(record))
    table = open(write_tables(str(tmp_path))).read()
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| tiny")]
    assert [(r[3].strip(), r[4].strip()) for r in rows] == [
        ("full", "0.5"),
        ("full", "1"),
        ("original truncate K=8", "1"),
        ("recap sub_caption K=1", "0.5"),
    ]
    delta = f"(+{100 * (better.mean() - base.mean()):.1f})"
    # both reduced rows (the p = 1 one too) are compared with the whole-caption p = 1 row, which shows no delta
    assert [delta in r[8] for r in rows] == [False, False, True, True] and "(" not in rows[1][8]
    long, _ = separate_data_versions(metric_rows(load_records(str(tmp_path))))
    assert set(long["reduction"]) == {"full", "original truncate K=8", "recap sub_caption K=1"}
    curves = plot_series(seed_rows(long).query("metric == 'i2t_R@1'"))
    assert sorted(c["label"] for c in curves) == [
        "i2t_R@1 (full)",
        "i2t_R@1 (original truncate K=8)",
        "i2t_R@1 (recap sub_caption K=1)",
    ]  # one curve per reduction: a curve over p never joins two reductions
