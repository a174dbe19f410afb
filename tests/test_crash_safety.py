"""Crash and concurrency safety of what the harness writes: records with their per-query files, publishing, the
data build's shards and the jsonl logs a resumed run reads back. Kills are real (a subprocess dies with os._exit at a
chosen call, patched in from ``tests/crash_driver.py``), and so are concurrent writers (two processes)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from captiondata.build import build_shards
from captiondata.config import DataConfig
from evals.results.bootstrap import QueryValues
from evals.results.records import SIDECAR_SUFFIX, read_per_query, read_record, write_record
from harness_infra.atomic import file_sha256
from training.distributed import DistEnv
from training.monitor import RunMonitor

DRIVER = os.path.join(os.path.dirname(__file__), "crash_driver.py")


def drive(*args: str, wait: bool = True):
    """Run the crash driver (a real process); its CompletedProcess, or the Popen when not ``wait``."""
    command = [sys.executable, DRIVER, *args]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def leftovers(folder) -> list:
    """Temporary files and per-query files without their JSON under ``folder``."""
    names = [os.path.relpath(p, folder) for p in glob.glob(os.path.join(str(folder), "**", "*"), recursive=True)]
    names += [os.path.relpath(p, folder) for p in glob.glob(os.path.join(str(folder), "**", ".tmp-*"), recursive=True)]
    return sorted(
        n
        for n in names
        if os.path.basename(n).startswith(".tmp-")
        or (
            n.endswith(SIDECAR_SUFFIX)
            and not os.path.exists(os.path.join(str(folder), n[: -len(SIDECAR_SUFFIX)] + ".json"))
        )
    )


@pytest.mark.parametrize(
    "target, marker",
    [
        ("evals.results.records.atomic_write_text", "r.json"),  # after the per-query file, before the JSON
        ("harness_infra.atomic._link_new", SIDECAR_SUFFIX),  # the per-query file written, not yet given its name
    ],
)
def test_a_record_writer_killed_midway_leaves_nothing_the_next_writer_trips_on(tmp_path, target, marker):
    killed = drive(target, marker, "write", str(tmp_path))
    assert killed.returncode == 9, killed.stderr
    assert not os.path.exists(tmp_path / "r.json") and leftovers(tmp_path)  # the kill left a partial unit behind

    again = drive("-", "-", "write", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(tmp_path / "r.json")  # the name is free again, not r-1.json
    assert read_record(again.stdout.strip())["per_query_file"] == "r" + SIDECAR_SUFFIX
    assert np.array_equal(read_per_query(again.stdout.strip())["m"].values, np.arange(10.0))
    assert leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == [".records.lock", "r.json", "r" + SIDECAR_SUFFIX]


def test_a_second_write_of_a_name_still_gets_a_new_name(tmp_path):
    record = {"checkpoint": "c", "task": "t", "metrics": {"m": 1.0}}
    first = write_record(record, str(tmp_path), {"m": QueryValues(np.ones(3), None)}, stem="r")
    second = write_record(record, str(tmp_path), {"m": QueryValues(np.zeros(3), None)}, stem="r", on_exists="new_name")
    assert (os.path.basename(first), os.path.basename(second)) == ("r.json", "r-1.json")
    assert (
        read_per_query(first)["m"].values.tolist() == [1.0, 1.0, 1.0] and read_per_query(second)["m"].values.sum() == 0
    )
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_record(record, str(tmp_path), None, stem="r")


def test_two_processes_publishing_the_same_records_publish_each_once(tmp_path):
    sources = []
    for index in range(24):  # many records: a wide window for the two publishers to interleave
        record = {"checkpoint": "c", "task": f"t{index}", "task_name": f"t{index}", "metrics": {"m": float(index)}}
        per_query = (
            {"m": QueryValues(np.full(5, float(index)), None)} if index % 2 else None
        )  # even ones: whole-set only
        sources.append(write_record(record, str(tmp_path / "eval"), per_query))
    results = tmp_path / "results"
    results.mkdir()
    runs = [drive("-", "-", "publish", str(results), *sources, wait=False) for _ in range(2)]
    (results / "go").touch()
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    published = [json.loads(out) for out, _ in outputs]
    assert published[0] == published[1]  # the second found the first one's records and published nothing new
    folder = results / "records"
    assert sorted(os.path.basename(p) for p in glob.glob(str(folder / "*.json"))) == sorted(
        f"exp__t{i}__e.json" for i in range(24)
    )
    assert len(glob.glob(str(folder / ("*" + SIDECAR_SUFFIX)))) == 12 and leftovers(folder) == []
    for index in range(1, 24, 2):
        assert read_per_query(str(folder / f"exp__t{index}__e.json"))["m"].values.tolist() == [float(index)] * 5


def test_a_torn_last_jsonl_line_is_dropped_and_counted_on_resume(tmp_path):
    good = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good) + '{"step": 4, "lo')
    (tmp_path / "validation.jsonl").write_text(json.dumps({"step": 2, "x0": 0.5}) + "\n")
    monitor = RunMonitor(str(tmp_path), DistEnv(), 10, 3, 24, 1, tensorboard=False, progress_bar=False)
    monitor.close()
    assert monitor.torn_lines == {"metrics.jsonl": 1}
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == good
    assert (tmp_path / "validation.jsonl").read_text() == json.dumps({"step": 2, "x0": 0.5}) + "\n"


def test_a_bad_jsonl_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    (tmp_path / "epochs.jsonl").write_text('{"step": 1, "epoch": 0}\n{"step": 2, "ep\n{"step": 3, "epoch": 1}\n')
    with pytest.raises(ValueError, match=r"epochs\.jsonl:2: not a JSON line"):
        RunMonitor(str(tmp_path), DistEnv(), 10, 3, 24, 1, tensorboard=False, progress_bar=False)


def scenes(folder) -> DataConfig:
    """A small scenes build of several shards per split."""
    return DataConfig(name="scenes", builder="scenes", shard_dir=str(folder), build_size=40, samples_per_shard=6)


def shard_listing(folder) -> dict:
    """Every file of a build folder (relative name -> sha256)."""
    return {
        os.path.relpath(p, folder): file_sha256(p)
        for p in glob.glob(os.path.join(str(folder), "**", "*.tar"), recursive=True)
    }


@pytest.mark.slow  # about 25 s: the scenes builder draws its images
def test_a_killed_data_build_leaves_no_temporary_files_after_the_next_build(tmp_path):
    reference = build_shards(scenes(tmp_path / "clean"))
    script = (
        "import os, sys, harness_infra.atomic as a\n"
        "real = a.AtomicFile.commit\n"
        "def commit(self):\n"
        "    if self.path.endswith('-000002.tar'): os._exit(9)\n"
        "    real(self)\n"
        "a.AtomicFile.commit = commit\n"
        "from captiondata.build import build_shards\nfrom captiondata.config import DataConfig\n"
        f"build_shards(DataConfig(name='scenes', builder='scenes', shard_dir={str(tmp_path / 'killed')!r}, build_size=40, samples_per_shard=6))\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr
    assert glob.glob(str(tmp_path / "killed" / ".tmp-*-000002.tar"))  # the kill left the unfinished shard
    (tmp_path / "killed" / ".tmp-x.tar").write_bytes(b"left by an older killed build")

    rebuilt = build_shards(scenes(tmp_path / "killed"))
    assert glob.glob(str(tmp_path / "killed" / "**" / ".tmp-*"), recursive=True) == []
    assert (
        shard_listing(tmp_path / "killed") == shard_listing(tmp_path / "clean") != {}
    )  # byte-identical to a clean build
    assert rebuilt["manifests"] == reference["manifests"]
    for split, manifest in rebuilt["manifests"].items():
        for shard in manifest["shards"]:
            folder = os.path.dirname(glob.glob(str(tmp_path / "killed" / "**" / shard["name"]), recursive=True)[0])
            with tarfile.open(os.path.join(folder, shard["name"])) as tar:
                assert len({m.name.split(".")[0] for m in tar.getmembers()}) == shard["count"]


SMOKE = [
    "+experiment=clip_smoke",
    "data.build_size=200",
    "train.stages.0.samples=128",
    "train.stages.0.batch_size=32",
    "eval.tasks.0.max_samples=120",
    "eval.tasks.1.max_samples=120",
    "eval.bootstrap_samples=50",
    "eval.permutation_samples=200",
]
TASKS = ["scenes_compositional_retrieval", "scenes_heldout_retrieval", "scenes_zeroshot"]


def complete_records(results) -> list:
    """The task of every published record, each checked to have its per-query file."""
    tasks = []
    for path in sorted(glob.glob(os.path.join(str(results), "records", "*.json"))):
        record = read_record(path)
        assert np.isfinite(next(iter(read_per_query(path).values())).values).all()
        tasks.append(record["task_name"])
    return tasks


@pytest.mark.slow  # about 70 s: four smoke runs of the pipeline, three of them killed
def test_a_pipeline_killed_in_eval_publish_or_tables_completes_on_the_next_run(tmp_path):
    where = [f"run.out_root={tmp_path}/runs", f"run.results_dir={tmp_path}/results"]
    kills = [
        (
            "evals.results.records.atomic_write_text",
            f"{tmp_path}/runs/eval/",
        ),  # eval: between a per-query file and its record
        ("evals.results.records.atomic_write_text", f"{tmp_path}/results/records/"),  # publish: the same point
        ("report.tables.atomic_write_bytes", "scenes.md"),
    ]  # tables
    for index, (target, marker) in enumerate(kills):
        killed = drive(target, marker, "pipeline", *SMOKE, *where)
        assert killed.returncode == 9, killed.stderr[-3000:]
        if index == 1:
            assert leftovers(tmp_path / "results")  # the publish kill left an orphan per-query file behind
    assert not (tmp_path / "results" / "scenes.md").exists()  # the last kill came before the table
    final = drive("-", "-", "pipeline", *SMOKE, *where)
    assert final.returncode == 0, final.stderr[-3000:]
    assert complete_records(tmp_path / "results") == TASKS  # one record per task, each with its per-query file
    assert leftovers(tmp_path) == []
    table = (tmp_path / "results" / "scenes.md").read_text()
    assert table.count("| RecapCLIP-nano |") == 1


@pytest.mark.slow  # about 40 s: two smoke runs of the pipeline at once
def test_two_identical_runs_started_together_on_one_cache_both_succeed_and_publish_once(tmp_path):
    where = [f"run.out_root={tmp_path}/runs", f"run.results_dir={tmp_path}/results"]
    runs = [drive("-", "-", "pipeline", *SMOKE, *where, wait=False) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-3000:] for _, err in outputs]
    assert complete_records(tmp_path / "results") == TASKS
    assert leftovers(tmp_path) == []
    assert (tmp_path / "results" / "scenes.md").read_text().count("| RecapCLIP-nano |") == 1


def test_the_lock_is_reentrant_in_one_process_and_still_excludes_another(tmp_path):
    from harness_infra.locks import exclusive

    lock = str(tmp_path / "x.lock")
    probe = (
        "import fcntl, sys\nh = open(sys.argv[1], 'a+b')\n"
        "try:\n    fcntl.flock(h.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(1)\n"
    )
    with exclusive(lock):
        with exclusive(lock):  # a writer that locks its folder, called by a caller holding that lock: no self-deadlock
            assert subprocess.run([sys.executable, "-c", probe, lock]).returncode == 1
        assert subprocess.run([sys.executable, "-c", probe, lock]).returncode == 1  # the inner exit kept the lock
    assert subprocess.run([sys.executable, "-c", probe, lock]).returncode == 0
