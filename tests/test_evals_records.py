"""Records: atomic, never overwritten, per-query sidecar, paired comparison of two checkpoints."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from evals.results.bootstrap import QueryValues
from evals.results.records import build_record, compare_records, read_per_query, read_record, record_stem, write_record
from evals.results.task_result import TaskResult
from evals.tasks.config import EvalConfig

CFG = EvalConfig(bootstrap_samples=200, permutation_samples=999)


def result(hits, fingerprint="fp"):
    r = TaskResult("retrieval", {"name": "d", "fingerprint": fingerprint}, n={"texts": len(hits)})
    r.set_metric("t2i_R@1", QueryValues(hits))
    r.set_metric("mean_per_class_recall", QueryValues(hits, groups=np.arange(len(hits)) % 3))
    r.set_undefined("t2i_R@10", "R@10 is undefined with 4 candidate images (< 10)")
    r.add_intervals(CFG.bootstrap_samples, CFG.confidence, CFG.seed)
    return r


def test_record_contents_and_roundtrip(tmp_path):
    hits = np.array([1, 0, 1, 1, 0, 1], dtype=float)
    record = build_record(
        result(hits), "runs/p0.8/epoch_3.pt", {"weights_id": "abc", "preprocess": "Compose(...)"}, CFG
    )
    path = write_record(record, str(tmp_path), result(hits).per_query)
    assert (
        os.path.basename(path)
        == "runs_p0.8_epoch_3.pt__retrieval.json"
        == record_stem("runs/p0.8/epoch_3.pt", "retrieval") + ".json"
    )
    stored = read_record(path)
    assert stored["metrics"]["t2i_R@1"] == pytest.approx(4 / 6) and stored["metrics"]["t2i_R@10"] is None
    assert "undefined" in stored["undefined"]["t2i_R@10"] and stored["intervals"]["t2i_R@10"] is None
    assert stored["dataset"]["fingerprint"] == "fp" and stored["model"]["weights_id"] == "abc"
    assert stored["interval_method"]["resamples"] == 200 and stored["n"] == {"texts": 6}
    values = read_per_query(path)
    assert np.array_equal(values["t2i_R@1"].values, hits)
    assert np.array_equal(values["mean_per_class_recall"].groups, np.arange(6) % 3)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_never_overwrites(tmp_path):
    record = build_record(result(np.ones(3)), "ckpt", {}, CFG)
    first = write_record(record, str(tmp_path))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_record(record, str(tmp_path))
    second = write_record(record, str(tmp_path), on_exists="new_name")
    assert second.endswith("ckpt__retrieval-1.json") and first != second
    assert json.load(open(first))["checkpoint"] == "ckpt"


def test_paired_comparison_from_records(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.random(300) < 0.7).astype(float)
    b = np.where(rng.random(300) < 0.7, a, 0.0)
    path_a = write_record(build_record(result(a), "A", {}, CFG), str(tmp_path), result(a).per_query)
    path_b = write_record(build_record(result(b), "B", {}, CFG), str(tmp_path), result(b).per_query)
    tests = compare_records(path_a, path_b, CFG)
    assert set(tests) == {"t2i_R@1", "mean_per_class_recall"}
    assert tests["t2i_R@1"].difference == pytest.approx(a.mean() - b.mean())
    assert tests["t2i_R@1"].p_value < 0.01 and tests["t2i_R@1"].interval[0] > 0
    same = compare_records(path_a, path_a, CFG)
    assert same["t2i_R@1"].p_value == 1.0 and same["t2i_R@1"].difference == 0.0


def test_comparison_refuses_different_data(tmp_path):
    path_a = write_record(build_record(result(np.ones(4)), "A", {}, CFG), str(tmp_path), result(np.ones(4)).per_query)
    other = result(np.ones(4), fingerprint="other")
    path_b = write_record(build_record(other, "B", {}, CFG), str(tmp_path), other.per_query)
    with pytest.raises(ValueError, match="same task on the same data"):
        compare_records(path_a, path_b)


def test_records_and_sidecars_get_plain_file_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = write_record(build_record(result(np.ones(4)), "A", {}, CFG), str(tmp_path), result(np.ones(4)).per_query)
    finally:
        os.umask(umask)
    sidecar = path[: -len(".json")] + ".queries.npz"
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644) and oct(os.stat(sidecar).st_mode & 0o777) == oct(0o644)


def test_whole_set_metrics_carry_their_own_interval_method(tmp_path):
    r = result(np.array([1.0, 0.0, 1.0]))
    r.set_whole_set_metric("fid", 31.25, (29.0, 33.5), "bootstrap over generated images, 100 resamples")
    path = write_record(build_record(r, "gen", {}, CFG), str(tmp_path), r.per_query)
    record = read_record(path)
    assert record["metrics"]["fid"] == 31.25 and record["intervals"]["fid"] == [29.0, 33.5]
    assert record["whole_set_interval_methods"] == {"fid": "bootstrap over generated images, 100 resamples"}
    assert set(read_per_query(path)) == {"t2i_R@1", "mean_per_class_recall"}  # no per-query values, so no paired test
