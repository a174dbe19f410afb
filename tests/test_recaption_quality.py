"""Caption faithfulness on the scenes: the scene-graph parser inverts the generator, and the scores behave as defined."""

from __future__ import annotations

import pytest

from captiondata.builders.scenes import describe_scene, paraphrase_scene, parse_scene_description, scene_records
from recaption.quality import score_caption, score_pairs, score_scene_shards


@pytest.fixture(scope="module")
def scenes():
    return list(scene_records("train", 150))


def test_the_parser_inverts_the_dense_description(scenes):
    for record in scenes:
        groups = record.meta["objects"]
        parsed = parse_scene_description(describe_scene(groups, record.meta["background"]))
        want = sorted((g["shape"], g["count"], g["size"], g["colour"], g["texture"], g["position"]) for g in groups)
        assert (
            sorted((g["shape"], g["count"], g["size"], g["colour"], g["texture"], g["position"]) for g in parsed)
            == want
        )


def test_true_descriptions_score_perfectly_and_alt_texts_are_truthful_but_partial(scenes):
    dense = score_pairs((describe_scene(r.meta["objects"], r.meta["background"]), r.meta["objects"]) for r in scenes)
    paraphrased = score_pairs(
        (paraphrase_scene(r.meta["objects"], r.meta["background"]), r.meta["objects"]) for r in scenes
    )
    for summary in (dense, paraphrased):
        assert summary["attribute_precision"] == summary["attribute_recall"] == summary["object_recall"] == 1.0
        assert summary["invented_per_caption"] == summary["count_errors_per_caption"] == 0.0
    originals = score_pairs((r.original, r.meta["objects"]) for r in scenes)
    # alt-text names only real objects and nearly always the right colour ("a red circle" for two red circles counts as
    # a wrong count claim)...
    assert originals["invented_per_caption"] == 0.0 and 0.85 < originals["attribute_precision"] < 1.0
    assert originals["attribute_recall"] < 0.2  # ...but leaves almost everything out (one colour at most, no position)


def test_wrong_claims_invented_objects_and_count_errors_are_counted():
    objects = [
        {"shape": "circle", "count": 2, "size": "small", "colour": "red", "texture": "solid", "position": "top left"},
        {"shape": "square", "count": 1, "size": "large", "colour": "blue", "texture": "dotted", "position": "center"},
    ]
    swapped = (
        "Two small blue solid circles at the top left and a large red dotted square in the center, and a green star."
    )
    counts = score_caption(swapped, objects)
    assert (
        counts["claims"] == 10 + 2 and counts["correct_claims"] == 8
    )  # the two colours swapped; the star's count and colour wrong
    assert counts["invented"] == 1 and counts["mentioned_groups"] == 2 and counts["recalled_attributes"] == 8
    assert score_caption("three small red solid circles at the top left", objects)["count_errors"] == 1


def test_scoring_reads_captions_and_scene_graphs_from_shards(tmp_path):
    import json

    from recaption_helpers import members, tar_of

    from captiondata.writer import ShardWriter

    records = list(scene_records("train", 6))
    writer = ShardWriter(str(tmp_path / "in"), "train", max_count=6)
    writer.write_all(records)
    writer.close()
    entries = {}
    for key, sample in members(str(tmp_path / "in" / "train-*.tar")).items():
        meta = json.loads(sample["json"])["meta"]
        entries.update(
            {
                f"{key}.png": sample["png"],
                f"{key}.json": sample["json"],
                f"{key}.cap.txt": describe_scene(meta["objects"], meta["background"]).encode(),
            }
        )
    tar_of(entries, str(tmp_path / "out.tar"))
    summary = score_scene_shards(str(tmp_path / "out.tar"), "cap.txt")
    assert summary["captions"] == 6 and summary["attribute_precision"] == 1.0 and summary["attribute_recall"] == 1.0
