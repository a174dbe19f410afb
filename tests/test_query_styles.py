"""Query styles (captiondata.queries): the scenes' held-out person-style queries, and retrieval and prompts read in them."""

from __future__ import annotations

import re

import numpy as np
import pytest
from eval_helpers import caption_records, write_project_shards

from captiondata.builders import scenes
from captiondata.queries import QUERY_STYLES, query_writer
from evals.tasks.config import FidTaskConfig, RetrievalTaskConfig
from evals.tasks.datasets import open_eval_dataset, project_shards
from evals.tasks.t2i import open_prompt_set
from harness_infra.errors import ConfigError


def words(text: str) -> list:
    return re.findall(r"[a-z]+", text.lower())


def training_text(n: int = 3000):
    """The vocabulary and word bigrams of n train scenes' recaptions and originals (their grammar is closed: the
    vocabulary is complete well before 3,000 scenes)."""
    vocab, bigrams = set(), set()
    for i in range(n):
        groups, background, _, _ = scenes._scene("train", i, 0)
        for text in (
            scenes.describe_scene(groups, background),
            scenes.original_caption(groups, scenes._rng(0, "train", i, 3))[0],
        ):
            w = words(text)
            vocab |= set(w)
            bigrams |= set(zip(w, w[1:]))
    return vocab, bigrams


def test_person_queries_share_little_wording_with_any_training_caption():
    vocab, bigrams = training_text()
    person_seen, paraphrase_seen = [], []
    for i in range(400):
        groups, background, _, _ = scenes._scene("test", i, 0)
        query = words(scenes.person_description(groups, background, 0, "test", i))
        paraphrase = words(scenes.paraphrase_scene(groups, background))
        assert sum(w not in vocab for w in query) >= 3, query  # words no training caption has
        person_seen.append(np.mean([b in bigrams for b in zip(query, query[1:])]))
        paraphrase_seen.append(np.mean([b in bigrams for b in zip(paraphrase, paraphrase[1:])]))
    # the template paraphrase is the training grammar (>= 85% of its bigrams occur in training captions); the
    # held-out style is not (measured: 13% on average, at most 29%)
    assert min(paraphrase_seen) >= 0.85 and np.mean(person_seen) < 0.25 and max(person_seen) < 0.5


def test_person_queries_state_every_groups_colour_shape_and_position():
    position_of = {phrase: position for position, phrase in scenes.PERSON_POSITIONS.items()}
    for i in range(200):
        record = scenes.scene_record("test", i)
        (query,) = query_writer("scenes_person")(record)
        found = sorted(position_of[p] for p in position_of if p in query)
        assert found == sorted(g["position"] for g in record.meta["objects"]), query
        for group in record.meta["objects"]:
            shape = scenes.plural(group["shape"]) if group["count"] > 1 else group["shape"]
            assert re.search(rf"\b{shape}\b", query) and re.search(rf"\b{group['colour']}\b", query), query


def test_person_queries_are_pure_and_tell_the_minimal_pair_apart():
    a, b = scenes.scene_record("test", 10), scenes.scene_record("test", 11)  # a pair: b = a with two groups swapped
    assert query_writer("scenes_person")(a) == query_writer("scenes_person")(scenes.scene_record("test", 10))
    assert query_writer("scenes_person")(a) != query_writer("scenes_person")(b)
    assert scenes.person_queries(a.meta) == [
        scenes.person_description(a.meta["objects"], a.meta["background"], 0, "test", 10)
    ]
    with pytest.raises(ValueError, match="scenes sample's meta"):
        scenes.person_queries({"split": "test"})
    with pytest.raises(ValueError, match="unknown query style 'nope'; choose one of references"):
        query_writer("nope")


def test_retrieval_reads_the_held_out_style_from_built_shards(tmp_path):
    records = [scenes.scene_record("test", i) for i in range(6)]
    spec = write_project_shards(str(tmp_path), records, per_shard=4)
    task = RetrievalTaskConfig(name="heldout", path=spec, queries="scenes_person")
    data = open_eval_dataset(task)
    texts = [t for _, t in data]
    assert texts == [scenes.person_queries(r.meta) for r in records]
    template = project_shards(spec, name="template")
    assert [t for _, t in template] == [r.references for r in records]
    assert data.fingerprint != template.fingerprint  # a cache of one style never answers for the other


def test_a_style_that_cannot_describe_the_shards_is_a_one_line_error(tmp_path):
    spec = write_project_shards(str(tmp_path), caption_records(3))  # not scenes: no scene graph in the meta
    data = open_eval_dataset(RetrievalTaskConfig(name="heldout", path=spec, queries="scenes_person"))
    with pytest.raises(ConfigError, match="queries=scenes_person cannot describe"):
        list(data)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="queries='person' is unknown; choose one of references, scenes_person"):
        RetrievalTaskConfig(name="t", path="x", queries="person")
    with pytest.raises(ConfigError, match="queries=scenes_person is written from project shards' meta"):
        RetrievalTaskConfig(name="t", path="x", format="clip_benchmark_wds", queries="scenes_person")
    assert set(QUERY_STYLES) == {"references", "scenes_person"}


def test_text_to_image_prompts_in_the_held_out_style(tmp_path):
    records = [scenes.scene_record("test", i) for i in range(4)]
    spec = write_project_shards(str(tmp_path), records)
    prompts = open_prompt_set(FidTaskConfig(name="fid", path=spec, prompt_source="scenes_person")).prompts
    assert prompts == [scenes.person_queries(r.meta)[0] for r in records]
    recap = open_prompt_set(FidTaskConfig(name="fid", path=spec, prompt_source="recap")).prompts
    assert recap == [r.recaptions[0] for r in records]
