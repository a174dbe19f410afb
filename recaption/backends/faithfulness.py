"""The ``faithfulness`` backend: captioners of controlled faithfulness on the embedded scenes.

It writes the scene's dense description (``captiondata.builders.scenes.describe_scene``, the oracle recaption's
grammar and vocabulary, so fluency and style stay the oracle's) of a corrupted copy of the scene graph stored in the
sample's meta (``corrupt_scene``), with the rates of ``recaption.faithfulness`` (``recaption.config.Faithfulness``):

- every stated attribute (count, size, colour, texture, position: ``recaption.quality.ATTRIBUTES``) of every kept
  object is replaced with probability ``attribute_error`` by a value the scene does not have for it (a colour or an
  occupied cell no other object has, another count, size or texture);
- every object is omitted with probability ``omitted``;
- for every object of the scene, with probability ``invented``, an object of a shape the scene does not have is
  added (random attributes, a free cell).

Each sample's draws come from a generator seeded by (``seed``, sample key) through the mixer's keyed hash
(``captiondata.mixer.uniform``), so a caption is a pure function of (rates, seed, key, scene). Scored by
``recaption.quality`` against the true scene graph, the expected attribute precision is
``(1 - attribute_error) * (1 - omitted) / (1 - omitted + invented)`` (claims of invented objects are all wrong;
``expected_precision``). The rates are in the captioner identity, so every sample's provenance names them. A sample
without a scene graph in its meta (not a scenes sample) fails the stage with a one-line ConfigError.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from captiondata.builders import scenes
from captiondata.mixer import uniform
from harness_infra.errors import ConfigError
from recaption.captioner import Caption, Item

VERSION = 1
COUNTS = (1, 2, 3)


def expected_precision(attribute_error: float, invented: float, omitted: float) -> float:
    """The attribute precision ``recaption.quality`` measures in expectation (per stated attribute, over objects:
    kept objects' claims are right with probability 1 - attribute_error, invented objects' claims never)."""
    kept = 1.0 - omitted
    return (1.0 - attribute_error) * kept / (kept + invented) if kept + invented > 0 else float("nan")


def _other(rng: np.random.Generator, values: Sequence[Any], exclude: Sequence[Any]) -> Any:
    """A uniformly drawn value of ``values`` not in ``exclude``."""
    free = [v for v in values if v not in exclude]
    return free[int(rng.integers(len(free)))]


def corrupt_scene(objects: Sequence[Mapping[str, Any]], rates: Any, rng: np.random.Generator) -> List[Dict[str, Any]]:
    """A copy of a scene's groups with attribute errors, omissions and inventions drawn at ``rates``
    (``recaption.config.Faithfulness``) from ``rng`` (module docstring)."""
    colours = [g["colour"] for g in objects]
    cells = [g["position"] for g in objects]
    shapes = [g["shape"] for g in objects]
    out: List[Dict[str, Any]] = []
    for group in objects:
        if rng.random() < rates.omitted:
            continue
        wrong = dict(group)
        for attribute in ("count", "size", "colour", "texture", "position"):
            if rng.random() >= rates.attribute_error:
                continue
            if attribute == "count":
                wrong["count"] = _other(rng, COUNTS, [group["count"]])
            elif attribute == "size":
                wrong["size"] = _other(rng, scenes.SIZES, [group["size"]])
            elif attribute == "colour":
                wrong["colour"] = _other(rng, list(scenes.COLOURS), colours)
            elif attribute == "texture":
                wrong["texture"] = _other(rng, scenes.TEXTURES, [group["texture"]])
            else:
                wrong["position"] = _other(rng, scenes.POSITIONS, cells)
        out.append(wrong)
    for _ in objects:
        if rng.random() < rates.invented:
            shape = _other(rng, scenes.SHAPES, shapes + [g["shape"] for g in out])
            out.append(
                {
                    "count": int(COUNTS[int(rng.integers(3))]),
                    "size": scenes.SIZES[int(rng.integers(2))],
                    "colour": list(scenes.COLOURS)[int(rng.integers(len(scenes.COLOURS)))],
                    "texture": scenes.TEXTURES[int(rng.integers(len(scenes.TEXTURES)))],
                    "shape": shape,
                    "position": _other(rng, scenes.POSITIONS, cells + [g["position"] for g in out]),
                }
            )
    return out


class FaithfulnessCaptioner:
    """Dense descriptions of corrupted scene graphs (module docstring); no model, no image."""

    def __init__(self, cfg: Any) -> None:
        self.rates = cfg.faithfulness
        rates = {k: getattr(self.rates, k) for k in ("attribute_error", "invented", "omitted", "seed")}
        self.identity = {
            "captioner": "faithfulness:scenes-oracle",
            "version": VERSION,
            **rates,
            "expected_precision": expected_precision(
                self.rates.attribute_error, self.rates.invented, self.rates.omitted
            ),
        }

    def describe(self, key: str, meta: Mapping[str, Any]) -> str:
        """The caption of one scenes sample from its key and stored meta."""
        rng = np.random.default_rng(int(uniform(self.rates.seed, key, 0, "faithfulness") * 2.0**63))
        groups = corrupt_scene(meta["objects"], self.rates, rng)
        if not groups:  # every object omitted
            return f"An empty {meta.get('background') or 'plain'} background."
        return scenes.describe_scene(groups, meta.get("background"))

    def caption(self, items: List[Item]) -> List[Caption]:
        """One caption per item, in order; ConfigError for an item without a scene graph."""
        out = []
        for item in items:
            if not item.meta or not isinstance(item.meta.get("objects"), list):
                raise ConfigError(
                    f"recaption.backend=faithfulness writes from the scene graph of scenes samples; {item.key} has none"
                )
            text = self.describe(item.key, item.meta)
            out.append(Caption(text, None, len(text.split())))
        return out
