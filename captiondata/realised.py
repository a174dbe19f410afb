"""Is the run what its label says? The realised caption mixture and caption coverage, checked against p.

A run labelled p (probability of the ORIGINAL caption per sample) trains on what the mixer emitted. Three things can
make the label false, and each is a ``LabelError`` (one line naming the cause and the counts; nothing is published):

- **Coverage.** A source the label draws from is missing in more than ``1 - min_coverage`` of the samples read (the
  recaptioner failed, a parquet join missed, the layout names a field the shards do not have). The mixer then falls
  back to the other source, so a "p = 0.5" run may have trained on alt-text only. ``min_coverage`` defaults to
  ``MIN_COVERAGE`` (``recaption.min_coverage``).
- **The coin.** The share of draws that picked the original is outside the binomial noise of p at that many draws.
- **The realised fraction.** The share of trained samples whose text is the original differs from p by more than the
  binomial noise at the samples trained plus the share of fallbacks (which coverage bounds).

Tolerance (both checks): ``Z_SCORE`` standard deviations of a binomial proportion, z * sqrt(p (1 - p) / n), plus 1 / n
for the discreteness of a count; z = 5 makes a false alarm of an honest run about one in 1.7 million (two-sided normal
tail). At p = 0 or 1 the noise term is 0: every deviation is a fallback.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional

from harness_infra.errors import LabelError

MIN_COVERAGE = 0.99
Z_SCORE = 5.0


def tolerance(p: float, n: int) -> float:
    """Allowed |observed share - p| for n binomial draws at p: ``Z_SCORE`` sd plus one count (1 / n); inf when n = 0."""
    if n <= 0:
        return math.inf
    return Z_SCORE * math.sqrt(p * (1.0 - p) / n) + 1.0 / n


def by_count(counts: Dict[str, int]) -> str:
    """Non-zero counts by reason, largest first, for one-line messages: ``server_error 249, timeout 3`` (``none``)."""
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n) or "none"


def needed_sources(strategy: str, p: Optional[float]) -> Dict[str, bool]:
    """Which caption sources a label draws from: {"original": bool, "recaption": bool}."""
    if strategy == "concat":
        return {"original": True, "recaption": True}
    return {"original": p is not None and p > 0.0, "recaption": p is not None and p < 1.0}


def sum_epochs(epochs: Iterable[Dict[str, Any]]) -> Dict[str, int]:
    """Counts over a run's epoch reports (``epochs.jsonl`` lines: the loader's summary plus what was trained):
    samples trained and their originals, samples read, draws, fallbacks and samples without each source."""
    total = {
        "trained": 0,
        "trained_original": 0,
        "trained_concat": 0,
        "read": 0,
        "drawn_original": 0,
        "drawn_recap": 0,
        "fallback_to_original": 0,
        "fallback_to_recap": 0,
        "no_original": 0,
        "no_recaption": 0,
    }
    for epoch in epochs:
        trained = int(epoch.get("samples") or 0)
        total["trained"] += trained
        if epoch.get("original_fraction") is not None:
            total["trained_original"] += int(round(float(epoch["original_fraction"]) * trained))
        if epoch.get("concat_fraction") is not None:
            total["trained_concat"] += int(round(float(epoch["concat_fraction"]) * trained))
        read = epoch.get("samples_read")
        total["read"] += int(read if read is not None else trained)
        for name in (
            "drawn_original",
            "drawn_recap",
            "fallback_to_original",
            "fallback_to_recap",
            "no_original",
            "no_recaption",
        ):
            total[name] += int(epoch.get(name) or 0)
    return total


def realised_mixture(
    counts: Dict[str, int], strategy: str, p: Optional[float], min_coverage: float = MIN_COVERAGE
) -> Dict[str, Any]:
    """The record's ``mixture`` section: the label, what was realised, coverage, fallbacks and the tolerances.

    ``realised_original_fraction`` = trained originals / trained samples (None under ``concat`` or when nothing was
    counted); ``drawn_original_fraction`` = the coin's share; ``coverage`` = samples read with each source / samples
    read; ``checked`` False (with ``why``) when the batch source reported no caption counts (in-memory test sources)."""
    read, trained = counts["read"], counts["trained"]
    draws = counts["drawn_original"] + counts["drawn_recap"]
    counted = read > 0 and (draws > 0 or strategy != "mix")
    out: Dict[str, Any] = {
        "p_label": p,
        "strategy": strategy,
        "min_coverage": min_coverage,
        "samples_trained": trained,
        "samples_read": read,
        "realised_original_fraction": counts["trained_original"] / trained
        if trained and strategy != "concat"
        else None,
        "drawn_original_fraction": counts["drawn_original"] / draws if draws else None,
        "draws": draws,
        "coverage": {
            "original": 1.0 - counts["no_original"] / read if read else None,
            "recaption": 1.0 - counts["no_recaption"] / read if read else None,
        },
        "missing": {"original": counts["no_original"], "recaption": counts["no_recaption"]},
        "fallbacks": {"to_original": counts["fallback_to_original"], "to_recap": counts["fallback_to_recap"]},
        "tolerance": {
            "z": Z_SCORE,
            "coin": tolerance(p, draws) if p is not None and draws else None,
            "realised": tolerance(p, trained) if p is not None and trained else None,
        },
        "checked": counted,
    }
    if not counted:
        out["why"] = "the batch source reported no caption draws (not the project's CaptionLoader)"
    return out


def check_mixture(mixture: Dict[str, Any], failures: Optional[Dict[str, int]] = None) -> None:
    """LabelError when ``mixture`` (``realised_mixture``'s section) contradicts its label: coverage of a needed source
    below ``min_coverage``, the coin outside its tolerance, or the realised fraction outside tolerance + fallback share.
    ``failures``: the recaptioner's failures by reason, named in the coverage message when given."""
    if not mixture["checked"]:
        return
    p, strategy, read = mixture["p_label"], mixture["strategy"], mixture["samples_read"]
    label = f"mix.strategy={strategy}" + (f" p={p:g}" if p is not None else "")
    for source, needed in needed_sources(strategy, p).items():
        coverage = mixture["coverage"][source]
        if needed and coverage is not None and coverage < mixture["min_coverage"]:
            because = f"; recaption failures: {by_count(failures)}" if source == "recaption" and failures else ""
            raise LabelError(
                f"{label}: {source} coverage {coverage:.4f} < min_coverage={mixture['min_coverage']:g} "
                f"({mixture['missing'][source]} of {read} samples read had no {source}; fallbacks to original "
                f"{mixture['fallbacks']['to_original']}, to recap {mixture['fallbacks']['to_recap']}){because}; nothing published"
            )
    if p is None:
        return
    drawn, coin = mixture["drawn_original_fraction"], mixture["tolerance"]["coin"]
    if drawn is not None and abs(drawn - p) > coin:
        raise LabelError(
            f"{label}: the mixer drew the original for {drawn:.4f} of {mixture['draws']} draws, outside p +- {coin:.4f} "
            f"(binomial, z={Z_SCORE:g}); nothing published"
        )
    realised, noise = mixture["realised_original_fraction"], mixture["tolerance"]["realised"]
    if realised is None or noise is None:
        return
    fallback_share = (mixture["fallbacks"]["to_original"] + mixture["fallbacks"]["to_recap"]) / read if read else 0.0
    if abs(realised - p) > noise + fallback_share:
        raise LabelError(
            f"{label}: realised original fraction {realised:.4f} over {mixture['samples_trained']} trained samples is "
            f"outside p +- {noise + fallback_share:.4f} (binomial z={Z_SCORE:g} {noise:.4f} + fallback share "
            f"{fallback_share:.4f}); nothing published"
        )


FIELD_CHECK_SAMPLES = 1000  # samples read from the first shards before training to check the layout's fields


def _describe(spec: Any) -> str:
    """A caption field as the config spells it: ``txt`` or ``json:org_caption``."""
    return spec.member if not spec.field else f"{spec.member}:{spec.field}"


def field_presence(urls: Iterable[str], layout: Any, limit: int = FIELD_CHECK_SAMPLES) -> Dict[str, Any]:
    """Read up to ``limit`` samples (no image decoding) and count those lacking the layout's original and recaption
    fields, with the members and JSON fields the samples do have: {"read", "no_original", "no_recaption",
    "members": {suffix: n}, "json_fields": {name: n}, "first_shard"}."""
    from captiondata.captions import extract_captions
    from captiondata.counters import SampleCounters
    from captiondata.decode import BadSample, decode_json
    from captiondata.reader import raw_samples

    out: Dict[str, Any] = {
        "read": 0,
        "no_original": 0,
        "no_recaption": 0,
        "members": {},
        "json_fields": {},
        "first_shard": None,
    }
    for raw in raw_samples(urls, SampleCounters(max_workers=0)):
        out["first_shard"] = out["first_shard"] or raw["__url__"]
        out["read"] += 1
        for member in (k for k in raw if not k.startswith("__")):
            out["members"][member] = out["members"].get(member, 0) + 1
        if "json" in raw:
            try:
                meta = decode_json(raw["json"])
            except BadSample:
                meta = None
            for name in meta if isinstance(meta, dict) else ():
                out["json_fields"][name] = out["json_fields"].get(name, 0) + 1
        try:
            captions = extract_captions(raw, layout)
            original, recaptions = captions["original"], captions["recaptions"]
        except BadSample:
            original, recaptions = None, []
        out["no_original"] += original is None
        out["no_recaption"] += not recaptions
        if out["read"] >= limit:
            break
    return out


def check_fields(
    presence: Dict[str, Any],
    layout: Any,
    needed: Dict[str, bool],
    min_coverage: float = MIN_COVERAGE,
    failures: Optional[Dict[str, int]] = None,
) -> None:
    """ConfigError when a caption source the label needs is missing in more than ``1 - min_coverage`` of the samples
    ``field_presence`` read: one line naming the layout field, the counts, and the members and JSON fields the samples
    have (img2dataset writes the alt-text to ``.txt`` and ``json.caption``: ``data/layout=img2dataset``)."""
    from harness_infra.errors import ConfigError

    read = presence["read"]
    if not read:
        return
    have = ", ".join(sorted(presence["members"]))
    fields = ", ".join(sorted(presence["json_fields"])[:12]) or "none"
    for source, key in (("original", "no_original"), ("recaption", "no_recaption")):
        missing = presence[key]
        if not needed.get(source) or 1.0 - missing / read >= min_coverage:
            continue
        specs = [layout.original] if source == "original" else list(layout.recaptions)
        looked = " or ".join(_describe(s) for s in specs) or "nothing (data.layout.recaptions is empty)"
        hint = (
            (
                "; img2dataset writes the alt-text to .txt and json.caption: use data/layout=img2dataset (or "
                "recap_datacomp_img2dataset)"
            )
            if "caption" in presence["json_fields"]
            else ""
        )
        because = f"; recaption failures: {by_count(failures)}" if source == "recaption" and failures else ""
        raise ConfigError(
            f"data.layout: the {source} caption ({looked}) is missing or empty in {missing} of {read} samples read from "
            f"{presence['first_shard']} (min_coverage={min_coverage:g}); the samples have members {have} and JSON fields "
            f"{fields}{hint}{because}"
        )
