"""The model card (README.md) of a CLIP export: what it was trained on, with which p, for how long, and how.

Layout of the export folder as open_clip's ``push_to_hf_hub`` writes it (``open_clip_config.json``,
``open_clip_model.safetensors``, ``README.md``), so ``open_clip.create_model_and_transforms('local-dir:DIR')``
and the Hugging Face hub read it unchanged.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

MODEL_CARD = "README.md"


def model_card(facts: Dict[str, Any], metrics: Optional[Dict[str, Any]] = None) -> str:
    """Markdown of a model card: ``facts`` keys model, data, p (probability of the ORIGINAL caption, None for
    ``concat``), strategy, budget ({steps, samples_seen, global_batch}), command, and optionally reduction (``MixConfig.reduction_label``); ``metrics`` (name -> value) or a
    line saying where the evaluation records go. Raises KeyError when a fact is missing."""
    p = facts["p"]
    lines = [
        "---",
        "library_name: open_clip",
        "license: other",
        "tags: [clip, open_clip, recap-harness]",
        "---",
        "",
        f"# {facts['model']} (recap-harness)",
        "",
        "Loads with `open_clip.create_model_and_transforms('local-dir:THIS_FOLDER')`.",
        "",
        "## Training",
        "",
        f"- data: `{facts['data']}`",
        f"- caption mixture: strategy `{facts['strategy']}`, p = {'n/a (both captions in every text)' if p is None else p}"
        " (p = probability of the ORIGINAL caption)"
        + (f", caption reduction: {facts['reduction']}" if facts.get("reduction", "full") != "full" else ""),
        f"- budget: {json.dumps(facts['budget'], sort_keys=True)}",
        f"- command: `{facts['command']}`",
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("Not evaluated at export time; the evaluation stage writes its records under `results/records`.")
    return "\n".join(lines) + "\n"
