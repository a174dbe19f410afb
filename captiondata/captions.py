"""Pull the original caption, the recaptions and the reference captions out of a raw sample.

Which member holds which caption is data (``CaptionLayout``), not code, so the project layout and
Recap-DataComp-1B's img2dataset layout are read by the same function.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from captiondata.config import CaptionField, CaptionLayout
from captiondata.decode import BadSample, decode_json, decode_text


def _member_value(sample: Dict[str, Any], member: str, parsed: Dict[str, Any]) -> Any:
    """Decoded content of a tar member (JSON members parsed once per sample and memoised)."""
    if member not in sample:
        return None
    if member not in parsed:
        raw = sample[member]
        parsed[member] = decode_json(raw) if member.endswith("json") else decode_text(raw)
    return parsed[member]


def _field_texts(sample: Dict[str, Any], spec: CaptionField, parsed: Dict[str, Any]) -> List[str]:
    """Non-empty, stripped caption strings at ``spec`` (a string or a list of strings)."""
    value = _member_value(sample, spec.member, parsed)
    if spec.field:
        for part in spec.field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def extract_captions(sample: Dict[str, Any], layout: CaptionLayout) -> Dict[str, Any]:
    """Return {original: str|None, recaptions: [str], references: [str], json: dict|None}.

    Raises BadSample("non_utf8_text"/"bad_json") for undecodable members; a sample with no caption
    at all raises "missing_caption", or "empty_caption" when caption members exist but are blank.
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
