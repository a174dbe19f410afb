"""The faithfulness backend: recaptions of the scenes with set error rates, scored by recaption.quality."""

from __future__ import annotations

import glob
import json
import math
import os

import pytest

from captiondata.builders import scenes
from harness_infra.errors import ConfigError
from recaption.backends.faithfulness import FaithfulnessCaptioner, expected_precision
from recaption.captioner import Item
from recaption.config import RecaptionConfig
from recaption.quality import score_pairs


def captioner(**rates) -> FaithfulnessCaptioner:
    return FaithfulnessCaptioner(RecaptionConfig(name="f", backend="faithfulness", faithfulness=rates))


def items(n: int, split: str = "train"):
    records = [scenes.scene_record(split, i) for i in range(n)]
    return records, [Item(r.key, None, r.original, meta=json.loads(json.dumps(r.meta))) for r in records]


@pytest.mark.parametrize(
    "rates",
    [
        {"attribute_error": 0.2, "invented": 0.0, "omitted": 0.0},
        {"attribute_error": 0.1, "invented": 0.2, "omitted": 0.1},
        {"attribute_error": 0.4, "invented": 0.1, "omitted": 0.3},
    ],
)
def test_measured_precision_and_recall_match_the_set_rates(rates):
    records, batch = items(1500)
    texts = [c.text for c in captioner(**rates).caption(batch)]
    summary = score_pairs(zip(texts, [r.meta["objects"] for r in records]))
    claims = 5 * sum(len(r.meta["objects"]) for r in records) * (1 - rates["omitted"] + rates["invented"])
    tolerance = 5 * math.sqrt(0.25 / claims) + 0.01  # 5 binomial sd (objects are not independent claims) + rounding
    assert summary["attribute_precision"] == pytest.approx(expected_precision(**rates), abs=tolerance)
    assert summary["object_recall"] == pytest.approx(1 - rates["omitted"], abs=0.03)
    groups = sum(len(r.meta["objects"]) for r in records) / len(records)
    assert summary["invented_per_caption"] == pytest.approx(rates["invented"] * groups, abs=0.03)


def test_no_errors_is_the_oracle_recaption_and_draws_are_pure():
    records, batch = items(50)
    assert [c.text for c in captioner().caption(batch)] == [r.recaptions[0] for r in records]
    noisy = captioner(attribute_error=0.5, invented=0.3, omitted=0.3)
    first = [c.text for c in noisy.caption(batch)]
    assert first == [c.text for c in noisy.caption(list(reversed(batch)))][::-1]  # a function of the key, not order
    reseeded = FaithfulnessCaptioner(
        RecaptionConfig(name="f", backend="faithfulness", faithfulness={"attribute_error": 0.5, "seed": 1})
    )
    assert sum(a != b for a, b in zip(first, [c.text for c in reseeded.caption(batch)])) > 25
    assert noisy.identity["attribute_error"] == 0.5 and noisy.identity["expected_precision"] == pytest.approx(
        0.5 * 0.7 / 1.0
    )


def test_bad_rates_and_samples_without_a_scene_graph_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"recaption.faithfulness.omitted=1.5 is outside \[0, 1\]"):
        captioner(omitted=1.5)
    with pytest.raises(ConfigError, match="needs|scene graph of scenes samples; k has none"):
        captioner().caption([Item("k", None, "alt text", meta={"source": "flickr8k"})])


def test_the_recaption_stage_writes_faithfulness_captions_with_their_rates(tmp_path):
    from pipeline.cli import main

    root = str(tmp_path)
    argv = [
        "+experiment=clip_smoke",
        "+recaption=faithfulness",
        "recaption.faithfulness.attribute_error=0.3",
        "data.build_size=120",
        "run.stages=[data,recaption]",
        f"run.out_root={root}/runs",
        f"run.results_dir={root}/results",
    ]
    assert main(argv) == 0
    folder = [d for d in glob.glob(f"{root}/runs/recaption/*") if os.path.isdir(d)][0]
    stored = json.load(open(os.path.join(folder, "_COMPLETE.json")))
    quality = json.dumps(stored)  # the stage's output carries the captions' measured faithfulness
    assert '"attribute_precision"' in quality and '"captions": 120' in quality
    from recaption.quality import score_scene_shards

    summary = score_scene_shards(f"{folder}/train-*.tar", "faithful.txt")
    assert summary["captions"] == 120 and summary["attribute_precision"] == pytest.approx(0.7 * 0.9 / 1.0, abs=0.06)
    import tarfile

    with tarfile.open(sorted(glob.glob(f"{folder}/train-*.tar"))[0]) as tar:
        provenance = next(m for m in tar.getmembers() if m.name.endswith(".faithful.json"))
        identity = json.loads(tar.extractfile(provenance).read())
    assert "0.3" in json.dumps(identity) and "faithfulness" in json.dumps(identity)
