"""Flickr8k caption shards with an honest, labelled recaption proxy.

No VLM captioner exists offline, so: original = the shortest of the five human captions (the
terse, alt-text-like source); recaption = the five human captions merged into one dense
description. Every sample records ``recap_is_proxy: true`` and both methods in its metadata.
All five captions are kept as retrieval references. Splits follow the official lists
(``Flickr_8k.{train,dev,test}Images.txt``; ``dev`` is written as ``val``).
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from typing import Dict, Iterator, List, Optional

from captiondata.records import Record
from harness_infra.errors import ConfigError

log = logging.getLogger(__name__)
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
TOKEN_FILE = "Flickr8k.token.txt"


def check_root(root: str) -> None:
    """Raise ConfigError unless ``root`` looks like a Flickr8k folder."""
    needed = [TOKEN_FILE, "images", *SPLIT_FILES.values()]
    missing = [n for n in needed if not os.path.exists(os.path.join(root, n))]
    if missing:
        raise ConfigError(f"Flickr8k folder {root!r} lacks {', '.join(missing)} (set data.source or $RECAP_DATA_ROOT)")


def read_captions(root: str) -> Dict[str, List[str]]:
    """Image file name -> its human captions in file order, from Flickr8k.token.txt."""
    captions: Dict[str, List[str]] = defaultdict(list)
    with open(os.path.join(root, TOKEN_FILE), encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            name_idx, _, caption = line.rstrip("\n").partition("\t")
            name = name_idx.rsplit("#", 1)[0]
            if not caption.strip():
                log.warning("Flickr8k token line %d has no caption; skipped", line_no)
                continue
            captions[name].append(caption.strip())
    return dict(captions)


def tidy(caption: str) -> str:
    """A caption as a sentence: collapse spaces, drop the space before final punctuation, capitalise, end with a period."""
    text = re.sub(r"\s+", " ", caption).strip()
    text = re.sub(r"\s+([.,!?;:])", r"\1", text).rstrip(" .")
    return (text[:1].upper() + text[1:] + ".") if text else ""


def merge_captions(captions: List[str]) -> str:
    """The recaption proxy: all distinct captions, tidied, longest first, joined into one description."""
    distinct = list(dict.fromkeys(tidy(c) for c in captions if c.strip()))
    return " ".join(sorted(distinct, key=lambda c: (-len(c), c)))


def shortest_caption(captions: List[str]) -> str:
    """The original proxy: the shortest caption in words (first one on ties), tidied."""
    return tidy(min(captions, key=lambda c: len(c.split())))


def flickr8k_records(root: str, split: str, limit: Optional[int] = None) -> Iterator[Record]:
    """Records of one official split; images stored as their original JPEG bytes.

    Caption ids without an image (the release has one) and images without captions are logged.
    """
    check_root(root)
    if split not in SPLIT_FILES:
        raise ConfigError(f"unknown Flickr8k split {split!r}; choose one of {', '.join(SPLIT_FILES)}")
    captions = read_captions(root)
    with open(os.path.join(root, SPLIT_FILES[split]), encoding="utf-8-sig") as handle:
        names = [line.strip() for line in handle if line.strip()]
    for name in names[:limit]:
        path = os.path.join(root, "images", name)
        if name not in captions or not os.path.isfile(path):
            log.warning(
                "Flickr8k %s: %s has %s; skipped",
                split,
                name,
                "no captions" if name not in captions else "no image file",
            )
            continue
        with open(path, "rb") as handle:
            data = handle.read()
        human = captions[name]
        yield Record(
            key=os.path.splitext(name)[0],
            image=data,
            original=shortest_caption(human),
            recaptions=[merge_captions(human)],
            references=[tidy(c) for c in human],
            meta={
                "source": "flickr8k",
                "split": split,
                "image": name,
                "recap_is_proxy": True,
                "original_method": "shortest of the five human captions",
                "recap_method": "the five human captions merged into one description (proxy for a VLM recaption)",
            },
            image_ext="jpg",
        )
