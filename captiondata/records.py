"""The in-memory form of one caption sample, as builders produce it and the reader returns it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from PIL import Image


@dataclass
class Record:
    """One image with its captions.

    original: the web alt-text (None when absent); recaptions: zero or more recaptions;
    references: ground-truth captions for retrieval evaluation (empty = use original);
    meta: free JSON-serialisable metadata (provenance, labels, ``recap_is_proxy``).
    ``image`` is a decoded PIL image or the encoded bytes to store as-is (``image_ext`` says which format).
    """

    key: str
    image: Union[Image.Image, bytes]
    original: Optional[str]
    recaptions: List[str] = field(default_factory=list)
    references: List[str] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)
    image_ext: str = "jpg"
