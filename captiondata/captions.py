"""Pull the original caption, the recaptions and the reference captions out of a raw sample.

Which member holds which caption is data (``CaptionLayout``), not code, so the project layout and
Recap-DataComp-1B's img2dataset layout are read by the same function.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any, Dict, List, Optional

from captiondata.config import CaptionField, CaptionLayout
from captiondata.decode import BadSample, decode_json, decode_text

NORMALIZATION = "html-unescape-x2+drop-Cc-Cf+collapse-space/1"  # enters evaluation identities; bump when it changes
_WHITESPACE = re.compile(r"\s+")


def _keep(char: str) -> bool:
    """False for control and format characters (Unicode Cc, Cf: NUL, DEL, zero-width space, BOM, ...), True for the
    rest; whitespace controls (tab, newline, carriage return, ...) are kept here and collapsed to one space later."""
    return char.isspace() or unicodedata.category(char) not in ("Cc", "Cf")


def normalize_caption(text: str) -> str:
    """The one caption normalisation of training and evaluation (captions, references, retrieval texts).

    HTML entities unescaped twice, as open_clip's tokenizer cleans text (``&amp;nbsp;`` -> ``&nbsp;`` -> no-break
    space), so every tokenizer sees what a browser would show; control and format characters (Unicode Cc/Cf) removed;
    whitespace runs (any Unicode space, tab, newline) collapsed to one space; ends stripped. An empty result means the
    caption holds no text (callers skip it: ``empty_caption``).
    """
    text = html.unescape(html.unescape(text))
    if not text.isprintable():
        text = "".join(c for c in text if _keep(c))
    return _WHITESPACE.sub(" ", text).strip()


def normalized_lines(text: str) -> List[str]:
    """The non-empty normalised lines of a multi-line text (CLIP_benchmark's retrieval ``.txt``: one caption a line)."""
    return [line for line in (normalize_caption(raw) for raw in text.splitlines()) if line]


def _member_value(sample: Dict[str, Any], member: str, parsed: Dict[str, Any]) -> Any:
    """Decoded content of a tar member (JSON members parsed once per sample and memoised)."""
    if member not in sample:
        return None
    if member not in parsed:
        raw = sample[member]
        parsed[member] = decode_json(raw) if member.endswith("json") else decode_text(raw)
    return parsed[member]


def _field_texts(sample: Dict[str, Any], spec: CaptionField, parsed: Dict[str, Any]) -> List[str]:
    """Non-empty caption strings at ``spec`` (a string or a list of strings), each through ``normalize_caption``."""
    value = _member_value(sample, spec.member, parsed)
    if spec.field:
        for part in spec.field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    texts = (normalize_caption(v) for v in values if isinstance(v, str))
    return [t for t in texts if t]


def extract_captions(sample: Dict[str, Any], layout: CaptionLayout) -> Dict[str, Any]:
    """Return {original: str|None, recaptions: [str], references: [str], json: dict|None}.

    Every caption passes ``normalize_caption``. Raises BadSample("non_utf8_text"/"bad_json") for undecodable members;
    a sample with no caption at all raises "missing_caption", or "empty_caption" when caption members exist but hold
    nothing after normalising (blank, NUL bytes, ``&nbsp;``).
    """
    parsed: Dict[str, Any] = {}
    originals = _field_texts(sample, layout.original, parsed)
    recaptions: List[str] = []
    for spec in layout.recaptions:
        recaptions.extend(_field_texts(sample, spec, parsed))
    references = _field_texts(sample, layout.references, parsed) if layout.references else []
    original: Optional[str] = originals[0] if originals else None
    if original is None and not recaptions:
        members = {layout.original.member, *(spec.member for spec in layout.recaptions)}
        raise BadSample("empty_caption" if any(m in sample for m in members) else "missing_caption")
    json_member = next((parsed[m] for m in parsed if m.endswith("json")), None)
    return {
        "original": original,
        "recaptions": recaptions,
        "references": references or ([original] if original else []),
        "json": json_member if isinstance(json_member, dict) else None,
    }
