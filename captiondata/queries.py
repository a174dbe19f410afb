"""Query styles: the texts an evaluation asks of one caption record (retrieval queries, text-to-image prompts).

``references`` is the record's own reference captions (its original when it has none), as the data builder wrote
them. A held-out style writes queries from what the record's meta stores about its image, so queries in a style no
training caption has can be asked of shards already built, without changing their bytes (and so without changing
the data fingerprint every trained model is keyed on):

- ``scenes_person``: the scenes' description as a person might write it
  (``captiondata.builders.scenes.person_description``: its own vocabulary, grammar and word order).

``QUERY_STYLES`` maps a name to ``(writer, version)``; a writer takes a ``Record`` and returns its texts (an empty
list: the record has none), and raises ValueError when the record is not one it can describe. The version enters
the fingerprint of any set read with the style.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from captiondata.builders.scenes import PERSON_VERSION, person_queries
from captiondata.records import Record


def reference_queries(record: Record) -> List[str]:
    """The record's reference captions, its original when it has none."""
    return list(record.references) or ([record.original] if record.original else [])


def scenes_person_queries(record: Record) -> List[str]:
    """The held-out person-style description of a scenes record (``person_queries`` of its meta)."""
    return person_queries(record.meta)


QUERY_STYLES: Dict[str, Tuple[Callable[[Record], List[str]], int]] = {
    "references": (reference_queries, 1),
    "scenes_person": (scenes_person_queries, PERSON_VERSION),
}


def query_writer(style: str) -> Callable[[Record], List[str]]:
    """The writer of a query style; ValueError naming the styles for an unknown one."""
    if style not in QUERY_STYLES:
        raise ValueError(f"unknown query style {style!r}; choose one of {', '.join(QUERY_STYLES)}")
    return QUERY_STYLES[style][0]
