"""How faithful captions of the embedded scenes are to the scene graph they were rendered from.

Every scenes sample stores its groups (count, size, colour, texture, shape, position) in its metadata, so a caption
can be checked exactly, with no detector in between: ``captiondata.builders.scenes.parse_scene_description`` reads
the groups a caption claims, and a claimed group is matched to the scene's group of the same shape (shapes are
distinct within a scene). Per caption set:

- attribute precision: correct attribute claims / all attribute claims (claims about invented objects are wrong);
- attribute recall: true attributes the caption states correctly / all true attributes (5 per group);
- object recall: scene groups the caption mentions / scene groups;
- invented objects: claimed groups whose shape is not in the scene (per caption, and the share of captions with any);
- count errors: mentioned groups whose stated count differs from the true count.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from captiondata.builders.scenes import parse_scene_description
from captiondata.counters import SampleCounters
from captiondata.decode import BadSample, decode_json, decode_text
from captiondata.reader import expand_shards, raw_samples

ATTRIBUTES = ("count", "size", "colour", "texture", "position")


def score_caption(caption: str, objects: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    """Counts for one caption against its scene's groups (summable over captions)."""
    truth = {group["shape"]: group for group in objects}
    claimed = parse_scene_description(caption)
    counts = {
        "claims": 0,
        "correct_claims": 0,
        "true_attributes": len(objects) * len(ATTRIBUTES),
        "recalled_attributes": 0,
        "groups": len(objects),
        "mentioned_groups": 0,
        "invented": 0,
        "count_errors": 0,
        "captions_with_invented": 0,
    }
    mentioned = set()
    for group in claimed:
        stated = [a for a in ATTRIBUTES if a in group]
        counts["claims"] += len(stated)
        real = truth.get(group["shape"])
        if real is None:
            counts["invented"] += 1
            continue
        correct = [a for a in stated if group[a] == real[a]]
        counts["correct_claims"] += len(correct)
        counts["count_errors"] += int("count" in group and group["count"] != real["count"])
        if group["shape"] not in mentioned:
            mentioned.add(group["shape"])
            counts["recalled_attributes"] += len(correct)
    counts["mentioned_groups"] = len(mentioned)
    counts["captions_with_invented"] = int(counts["invented"] > 0)
    return counts


def summarise(totals: Dict[str, int], captions: int) -> Dict[str, Optional[float]]:
    """Rates from summed counts."""

    def ratio(a: str, b: str) -> Optional[float]:
        return totals[a] / totals[b] if totals[b] else None

    return {
        "captions": captions,
        "attribute_precision": ratio("correct_claims", "claims"),
        "attribute_recall": ratio("recalled_attributes", "true_attributes"),
        "object_recall": ratio("mentioned_groups", "groups"),
        "invented_per_caption": totals["invented"] / captions if captions else None,
        "captions_with_invented": totals["captions_with_invented"] / captions if captions else None,
        "count_errors_per_caption": totals["count_errors"] / captions if captions else None,
    }


def score_pairs(pairs: Iterable[Tuple[str, Sequence[Dict[str, Any]]]]) -> Dict[str, Optional[float]]:
    """Summary over (caption, scene groups) pairs."""
    totals: Dict[str, int] = {}
    n = 0
    for caption, objects in pairs:
        for name, value in score_caption(caption, objects).items():
            totals[name] = totals.get(name, 0) + value
        n += 1
    if not n:
        return summarise(
            {
                k: 0
                for k in (
                    "claims",
                    "correct_claims",
                    "true_attributes",
                    "recalled_attributes",
                    "groups",
                    "mentioned_groups",
                    "invented",
                    "count_errors",
                    "captions_with_invented",
                )
            },
            0,
        )
    return summarise(totals, n)


def scene_caption_pairs(
    spec: str, member: str, indices: Optional[Tuple[int, int]] = None
) -> List[Tuple[str, List[Dict[str, Any]]]]:
    """(caption in ``member``, scene groups from ``KEY.json`` meta) of every scenes sample of a shard spec that has
    both, optionally only scenes whose index lies in ``[start, stop)`` (e.g. the captioner's own training scenes
    apart from the rest); samples without the member are skipped (the recaption stage counts them as failures)."""
    pairs = []
    for raw in raw_samples(expand_shards(spec), SampleCounters(max_workers=0)):
        if member not in raw or "json" not in raw:
            continue
        try:
            meta = decode_json(raw["json"]).get("meta", {})
            caption = decode_text(raw[member])
        except BadSample:
            continue
        if "objects" in meta and (indices is None or indices[0] <= meta.get("index", -1) < indices[1]):
            pairs.append((caption, meta["objects"]))
    return pairs


def score_scene_shards(spec: str, member: str, indices: Optional[Tuple[int, int]] = None) -> Dict[str, Optional[float]]:
    """Faithfulness of the captions in ``member`` (e.g. ``coca.txt``) of scenes shards to their scene graphs."""
    return score_pairs(scene_caption_pairs(spec, member, indices))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Score scenes captions against their scene graphs.")
    parser.add_argument("shards", help="shard spec (glob, braces) of recaptioned scenes shards")
    parser.add_argument("--member", required=True, help="the caption member to score, e.g. coca.txt")
    parser.add_argument("--indices", default=None, help="START:STOP, only scenes with index in [START, STOP)")
    args = parser.parse_args()
    span = tuple(int(v) for v in args.indices.split(":")) if args.indices else None
    try:
        summary = score_scene_shards(args.shards, args.member, span)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {str(exc).splitlines()[0]}") from None
    if not summary["captions"]:
        raise SystemExit(
            f"error: no scenes sample in {args.shards} has a {args.member} member and scene-graph metadata"
        )
    print(json.dumps(summary, indent=2))
