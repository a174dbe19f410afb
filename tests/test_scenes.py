"""The embedded scenes data set: determinism, caption contracts, swapped pairs, held-out combinations, zero-shot split."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import List

import numpy as np
import pytest
from PIL import Image

from captiondata.builders import scenes
from captiondata.builders.scenes import (
    COLOURS,
    DEFAULT_SIZES,
    HELDOUT_COMBOS,
    ORIGINAL_STYLE_PROBS,
    POSITION_PHRASES,
    SHAPES,
    SPLITS,
    SWAP_KINDS,
    TEXTURES,
    describe_scene,
    scene_record,
    scene_records,
    zeroshot_classnames,
    zeroshot_templates,
)
from captiondata.records import Record


def words(text: str) -> List[str]:
    """Lower-case word tokens of a caption."""
    return re.findall(r"[a-z]+", text.lower())


def lemmas(text: str) -> Counter:
    """Bag of words with shape plurals folded to the singular."""
    singular = {scenes.plural(shape): shape for shape in SHAPES}
    return Counter(singular.get(word, word) for word in words(text))


def colour_words(text: str) -> set:
    """The colour names a caption mentions."""
    return set(words(text)) & set(COLOURS)


def shape_words(text: str) -> set:
    """The shape names a caption mentions (singular or plural)."""
    found = set()
    for word in words(text):
        for shape in SHAPES:
            if word in (shape, scenes.plural(shape)):
                found.add(shape)
    return found


@pytest.fixture(scope="module")
def train500() -> List[Record]:
    """The first 500 train records (default seed and size)."""
    return list(scene_records("train", 500))


@pytest.fixture(scope="module")
def split_test400() -> List[Record]:
    """The first 400 test records (200 swapped pairs)."""
    return list(scene_records("test", 400))


@pytest.mark.parametrize("split", SPLITS)
def test_same_index_gives_identical_record(split: str) -> None:
    for index in (0, 7, 123):
        a, b = scene_record(split, index), scene_record(split, index)
        assert a.image.tobytes() == b.image.tobytes()
        assert (a.key, a.original, a.recaptions, a.references) == (b.key, b.original, b.recaptions, b.references)
        assert json.dumps(a.meta, sort_keys=True) == json.dumps(b.meta, sort_keys=True)


def test_records_independent_of_call_order() -> None:
    forward = list(scene_records("test", 6))
    scene_record("train", 5)  # unrelated calls in between must not matter
    backward = [scene_record("test", i) for i in reversed(range(6))][::-1]
    for a, b in zip(forward, backward):
        assert a.image.tobytes() == b.image.tobytes()
        assert (a.original, a.recaptions, a.references) == (b.original, b.recaptions, b.references)


def test_seed_changes_the_data() -> None:
    a = [scene_record("train", i, seed=0) for i in range(5)]
    b = [scene_record("train", i, seed=1) for i in range(5)]
    assert [r.recaptions for r in a] != [r.recaptions for r in b]
    assert a[0].key == b[0].key  # keys name the position, not the content


def test_keys_unique_and_stable() -> None:
    keys = [r.key for split in SPLITS for r in scene_records(split, 40)]
    assert len(keys) == len(set(keys))
    assert scene_record("val", 12).key == "scenes-val-000012"


@pytest.mark.parametrize("image_size", [64, 96])
def test_image_size_and_mode(image_size: int) -> None:
    for split in SPLITS:
        record = scene_record(split, 3, image_size=image_size)
        assert isinstance(record.image, Image.Image)
        assert record.image.mode == "RGB" and record.image.size == (image_size, image_size)
        assert record.image_ext == "png"


def test_default_sizes_and_record_shape() -> None:
    assert set(DEFAULT_SIZES) == set(SPLITS)
    assert sum(1 for _ in scene_records("val")) == DEFAULT_SIZES["val"]
    for split in SPLITS:
        record = scene_record(split, 1)
        assert isinstance(record.original, str) and record.original
        assert len(record.recaptions) == 1
        assert record.meta["split"] == split
        assert json.loads(json.dumps(record.meta)) == record.meta
        assert bool(record.references) == (split in ("val", "test"))


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        scene_record("training", 0)
    with pytest.raises(ValueError):
        scene_record("train", -1)
    with pytest.raises(ValueError):
        list(scene_records("train", -2))


def test_recaption_mentions_every_object(train500: List[Record]) -> None:
    for record in train500:
        recap = record.recaptions[0]
        assert 8 <= len(recap.split()) <= 60
        for group in record.meta["objects"]:
            shape = scenes.plural(group["shape"]) if group["count"] > 1 else group["shape"]
            phrase = (
                f"{group['size']} {group['colour']} {group['texture']} {shape} {POSITION_PHRASES[group['position']]}"
            )
            assert phrase in recap, (phrase, recap)
        assert record.meta["background"] in recap
        assert not colour_words(record.meta["background"])  # background names never contain colour words


def test_original_is_less_informative(train500: List[Record]) -> None:
    orig_colours, recap_colours = [], []
    for record in train500:
        recap, original = record.recaptions[0], record.original
        present = {g["colour"] for g in record.meta["objects"]}
        assert colour_words(recap) == present
        assert colour_words(original) <= present  # partial, never wrong
        assert recap.lower() not in original.lower() and original != recap
        # No bindings beyond one colour-shape pair, and never a position, texture or size word.
        assert not (len(colour_words(original)) > 1 and shape_words(original))
        assert not set(words(original)) & (
            set(TEXTURES) | {"small", "large", "left", "right", "top", "bottom", "center"}
        )
        orig_colours.append(len(colour_words(original)))
        recap_colours.append(len(colour_words(recap)))
    assert np.mean(orig_colours) < 0.5 * np.mean(recap_colours)
    assert np.mean([len(r.original.split()) for r in train500]) < 0.3 * np.mean(
        [len(r.recaptions[0].split()) for r in train500]
    )


def test_original_styles_follow_fixed_probabilities(train500: List[Record]) -> None:
    counts = Counter(r.meta["original_style"] for r in train500)
    assert set(counts) == set(ORIGINAL_STYLE_PROBS)
    for style, prob in ORIGINAL_STYLE_PROBS.items():
        assert abs(counts[style] / len(train500) - prob) < 0.07, (style, counts)
    assert any(re.fullmatch(r"(IMG_|DSC)\d+\.(jpg|JPG)", r.original) for r in train500)


def test_swapped_pairs_share_words_but_not_bindings(split_test400: List[Record]) -> None:
    kinds = Counter()
    for first, second in zip(split_test400[0::2], split_test400[1::2]):
        assert first.meta["pair"] == second.meta["pair"] and first.meta["swap"] == second.meta["swap"]
        assert second.meta["partner_index"] == first.meta["index"]
        kinds[first.meta["swap"]] += 1
        a, b = first.recaptions[0], second.recaptions[0]
        assert a != b and lemmas(a) == lemmas(b)  # bag-of-words identical up to plural endings
        assert first.references[0] == a and len(first.references) == 2
        assert lemmas(first.references[1]) == lemmas(second.references[1])
        assert first.image.tobytes() != second.image.tobytes()
        assert len(first.meta["objects"]) >= 2
    assert set(kinds) == set(SWAP_KINDS)
    assert len({r.recaptions[0] for r in split_test400}) == len(split_test400)  # every query has one true image


def test_heldout_combinations_only_outside_train(train500: List[Record], split_test400: List[Record]) -> None:
    heldout = set(HELDOUT_COMBOS)
    assert len({c for c, _ in heldout}) == len(heldout) == len({s for _, s in heldout})
    for record in list(scene_records("train", 1500)):
        assert not {(g["colour"], g["shape"]) for g in record.meta["objects"]} & heldout
        assert not record.meta["heldout"]
    flagged = [r for r in split_test400 if r.meta["heldout"]]
    assert 0.15 * len(split_test400) < len(flagged) < 0.7 * len(split_test400)
    for record in flagged:
        assert {(g["colour"], g["shape"]) for g in record.meta["objects"]} & heldout


def test_zeroshot_split_labels_and_prompts() -> None:
    classnames, templates = zeroshot_classnames(), zeroshot_templates()
    assert len(classnames) == len(set(classnames)) == len(COLOURS) * len(SHAPES)
    assert all(re.fullmatch(r"[a-z]+ [a-z]+", name) for name in classnames)
    assert 3 <= len(templates) <= 6 and all(t.count("{c}") == 1 for t in templates)
    assert "a photo of a red circle." in [t.format(c="red circle") for t in templates]
    labels = []
    for record in scene_records("zeroshot", 2 * len(classnames)):
        label = record.meta["label"]
        assert 0 <= label < len(classnames) and record.meta["classname"] == classnames[label]
        (group,) = record.meta["objects"]
        assert f"{group['colour']} {group['shape']}" == classnames[label]
        if group["texture"] == "solid":  # the object is drawn where the scene graph says
            cx, cy, _ = group["instances"][0]
            pixel = np.asarray(record.image)[int(cy), int(cx)].astype(int)
            assert np.abs(pixel - np.array(COLOURS[group["colour"]])).max() <= 10
        labels.append(label)
    assert Counter(labels) == Counter({k: 2 for k in range(len(classnames))})


def test_describe_scene_orders_left_to_right() -> None:
    objects = [
        {"count": 1, "size": "large", "colour": "red", "texture": "striped", "shape": "circle", "position": "right"},
        {"count": 2, "size": "small", "colour": "blue", "texture": "dotted", "shape": "cross", "position": "top left"},
    ]
    assert describe_scene(objects, "light grey") == (
        "Two small blue dotted crosses at the top left and a large red striped circle on the right, on a light grey background."
    )
    assert describe_scene(objects[:1]) == "A large red striped circle on the right."
