"""Per-epoch sample counters shared between the main process and DataLoader workers.

Each worker writes its own row of a shared-memory int64 tensor (row 0 = the main process), so
counts from any number of workers add up without locks. Nothing is dropped without a count.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch.utils.data import get_worker_info

SKIP_REASONS = (
    "empty_image",
    "corrupt_image",
    "image_too_large",
    "missing_image",
    "missing_caption",
    "empty_caption",
    "non_utf8_text",
    "bad_json",
    "duplicate_key",
    "dotted_key",
    "truncated_tar",
    "member_too_large",
    "unreadable_shard",
    "no_image_feature",
    "bad_label",
)
MIX_EVENTS = (
    "samples",
    "drawn_original",
    "drawn_recap",
    "emitted_original",
    "emitted_recap",
    "emitted_concat",
    "fallback_to_original",
    "fallback_to_recap",
    "no_original",  # samples read without an original caption (the layout's original field absent or empty)
    "no_recaption",  # samples read without any recaption
)
# Conversions of decodable images (``captiondata.decode.decode_image`` reports them; nothing is skipped).
DECODE_EVENTS = (
    "exif_rotated",
    "converted_high_bit_depth",
    "converted_alpha",
    "converted_mode",
)
COUNTER_NAMES = SKIP_REASONS + MIX_EVENTS + DECODE_EVENTS
_INDEX = {name: i for i, name in enumerate(COUNTER_NAMES)}


class SampleCounters:
    """Counts of skipped samples by reason and of caption-mixer events, summed over all workers."""

    def __init__(self, max_workers: int = 64) -> None:
        self.table = torch.zeros((max_workers + 1, len(COUNTER_NAMES)), dtype=torch.int64).share_memory_()
        self._pending = [0] * len(COUNTER_NAMES)

    def __getstate__(self) -> Dict[str, object]:
        return {"table": self.table}

    def __setstate__(self, state: Dict[str, object]) -> None:
        self.table = state["table"]
        self._pending = [0] * len(COUNTER_NAMES)

    def _row(self) -> int:
        """Row of the calling process: 0 in the main process, worker id + 1 in a loader worker."""
        info = get_worker_info()
        row = 0 if info is None else info.id + 1
        if row >= self.table.shape[0]:
            raise ValueError(
                f"more loader workers ({row}) than SampleCounters was sized for ({self.table.shape[0] - 1})"
            )
        return row

    def add(self, name: str, n: int = 1) -> None:
        """Add n to counter ``name`` (buffered in this process until ``flush``)."""
        self._pending[_INDEX[name]] += n

    def flush(self) -> None:
        """Move this process's buffered counts into its row of the shared table."""
        if any(self._pending):
            self.table[self._row()] += torch.tensor(self._pending, dtype=torch.int64)
            self._pending = [0] * len(COUNTER_NAMES)

    def reset(self) -> None:
        """Zero every counter (call in the main process before an epoch)."""
        self.table.zero_()
        self._pending = [0] * len(COUNTER_NAMES)

    def totals(self) -> Dict[str, int]:
        """Counter name -> total over all processes (workers flush with every batch and at their end)."""
        self.flush()
        summed = self.table.sum(dim=0).tolist()
        return {name: int(v) for name, v in zip(COUNTER_NAMES, summed)}


def summarize(totals: Dict[str, int]) -> Dict[str, object]:
    """Epoch report: samples, skipped by reason, image conversions by kind, realised original fraction and fallbacks.

    ``original_fraction`` = emitted originals / samples (what the model saw; None under ``concat``, where every
    text holds both and ``concat_fraction`` = emitted concatenations / samples says so instead);
    ``drawn_original_fraction`` = draws of the original / draws (the mixer's coin, before fallback); ``drawn_original``,
    ``drawn_recap`` the draws themselves; ``no_original`` / ``no_recaption`` = samples read without that source (the
    caption coverage ``captiondata.realised`` checks against the label).
    """
    skipped = {reason: totals[reason] for reason in SKIP_REASONS if totals.get(reason, 0)}
    samples = totals.get("samples", 0)
    draws = totals.get("drawn_original", 0) + totals.get("drawn_recap", 0)
    return {
        "samples": samples,
        "skipped_total": sum(skipped.values()),
        "skipped": skipped,
        "converted": {event: totals[event] for event in DECODE_EVENTS if totals.get(event, 0)},
        "original_fraction": totals.get("emitted_original", 0) / samples
        if samples and not totals.get("emitted_concat", 0)
        else None,
        "concat_fraction": totals.get("emitted_concat", 0) / samples if samples else None,
        "drawn_original_fraction": totals.get("drawn_original", 0) / draws if draws else None,
        "fallback_to_original": totals.get("fallback_to_original", 0),
        "fallback_to_recap": totals.get("fallback_to_recap", 0),
        "drawn_original": totals.get("drawn_original", 0),
        "drawn_recap": totals.get("drawn_recap", 0),
        "no_original": totals.get("no_original", 0),
        "no_recaption": totals.get("no_recaption", 0),
    }
