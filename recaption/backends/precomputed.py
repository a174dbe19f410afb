"""The ``precomputed`` backend: Recap-DataComp-1B's released recaptions, joined to your shards.

The release is parquet (columns url, re_caption, org_caption, sha256, key, re_clip_score, org_clip_score, re_length,
org_length); img2dataset fetches the images into webdataset shards whose ``KEY.json`` keeps the url. Join on the
sample ``key``, the ``sha256`` of the image as downloaded (img2dataset's ``KEY.json`` ``sha256``), or the ``url``; a sample with no row is a failure counted
as ``not_in_parquet`` (and retried on the next run, for instance after adding parquet files). Only the join column
and the caption column are read (pyarrow), and held in memory as one dictionary: give the parquet files that cover
your shards (the release is split like the image shards), not all 1.3B rows.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

from harness_infra.errors import ConfigError, one_line
from harness_infra.identity import sha256_json
from recaption.backends.weights import weights_identity
from recaption.captioner import Caption, Item, finish_text

log = logging.getLogger(__name__)


def parquet_files(specs: List[str]) -> List[str]:
    """Every parquet file of the given paths and globs, sorted; a spec that matches nothing is a ConfigError."""
    files: List[str] = []
    for spec in specs:
        matched = sorted(glob.glob(os.path.expanduser(spec)))
        if not matched:
            raise ConfigError(f"recaption.precomputed.parquet: {spec!r} matches no file")
        files.extend(matched)
    return files


def read_captions(path: str, join_on: str, column: str) -> List[Tuple[str, str]]:
    """The (join value, caption) rows of one parquet file, type-checked: ConfigError (one line naming the file, the
    column and the type found) for a file that is not parquet, a missing column, a caption column that is not
    strings, or a join column that is neither strings nor integers. Rows with a null value or caption are left out
    (their samples count ``not_in_parquet``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(
            f"recaption.precomputed.parquet: {path} is not a readable parquet file ({one_line(exc)})"
        ) from None
    missing = [c for c in (join_on, column) if c not in schema.names]
    if missing:
        raise ConfigError(
            f"recaption.precomputed: {path} has no column {missing[0]!r} (columns: {', '.join(schema.names)})"
        )
    caption_type, join_type = schema.field(column).type, schema.field(join_on).type
    if not (pa.types.is_string(caption_type) or pa.types.is_large_string(caption_type)):
        raise ConfigError(f"recaption.precomputed.column={column!r} in {path} holds {caption_type}, not strings")
    if not (pa.types.is_string(join_type) or pa.types.is_large_string(join_type) or pa.types.is_integer(join_type)):
        raise ConfigError(
            f"recaption.precomputed.join_on={join_on!r} in {path} holds {join_type}, not strings or integers"
        )
    try:
        part = pq.read_table(path, columns=[join_on, column]).to_pydict()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"recaption.precomputed.parquet: {path} cannot be read ({one_line(exc)})") from None
    return [
        (str(value), caption)
        for value, caption in zip(part[join_on], part[column])
        if value is not None and caption is not None
    ]


class PrecomputedCaptioner:
    """Captions looked up in parquet files by key, sha256 or url.

    A join value in several rows (of one file or several) is kept once when the rows agree on the caption (counted in
    ``duplicate_rows`` and logged) and a ConfigError when they do not."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        pre = cfg.precomputed
        self.files = parquet_files(list(pre.parquet))
        self.table: Dict[str, str] = {}
        self.duplicate_rows = 0
        for path in self.files:
            for value, caption in read_captions(path, pre.join_on, pre.column):
                if value in self.table:
                    self.duplicate_rows += 1
                    if self.table[value] != caption:
                        raise ConfigError(
                            f"recaption.precomputed: {pre.join_on} {value!r} has rows with different captions "
                            f"(one in {path}); deduplicate the parquet (which caption trains would otherwise depend on row order)"
                        )
                self.table[value] = caption
        log.info(
            "precomputed captions: %d rows from %d parquet files, joined on %s",
            len(self.table),
            len(self.files),
            pre.join_on,
        )
        if self.duplicate_rows:
            log.warning(
                "precomputed captions: %d duplicate %s rows with equal captions, each kept once",
                self.duplicate_rows,
                pre.join_on,
            )
        self.seen_source_hash = False
        self.identity = {
            "captioner": f"precomputed:{pre.column}",
            "join_on": pre.join_on,
            "weights_sha256": sha256_json([weights_identity(f)["weights_sha256"] for f in self.files]),
            "files": [os.path.basename(f) for f in self.files],
            "prompt": None,
            "decoding": "released captions",
        }

    def join_value(self, item: Item) -> Optional[str]:
        """The item's value of the join column. ``sha256`` is the hash the release's column holds: of the image as
        downloaded, which img2dataset writes into ``KEY.json`` (``--compute_hash sha256``); the shard's bytes are
        re-encoded and never match. A shard without that field is a ConfigError naming the joins that work."""
        join = self.cfg.precomputed.join_on
        if join == "key":
            return item.key
        if join == "sha256":
            if item.source_sha256 is None and not self.seen_source_hash:
                raise ConfigError(
                    f"recaption.precomputed.join_on=sha256: sample {item.key!r} has no sha256 in its KEY.json. The "
                    "release's sha256 is of the image as downloaded, which img2dataset records with --compute_hash "
                    "sha256 (the shard holds re-encoded bytes, whose hash never matches); use join_on=url or join_on=key"
                )
            self.seen_source_hash = self.seen_source_hash or item.source_sha256 is not None
            return item.source_sha256.lower() if item.source_sha256 else None
        return item.url

    def caption(self, items: List[Item]) -> List[Caption]:
        """The released caption of each item (``not_in_parquet`` when none)."""
        out = []
        for item in items:
            value = self.join_value(item)
            if value is None or value not in self.table:
                out.append(Caption.failed("not_in_parquet"))
            else:
                out.append(finish_text(self.table[value], self.cfg))
        return out
