"""The ``precomputed`` backend: Recap-DataComp-1B's released recaptions, joined to your shards.

The release is parquet (columns url, re_caption, org_caption, sha256, key, re_clip_score, org_clip_score, re_length,
org_length); img2dataset fetches the images into webdataset shards whose ``KEY.json`` keeps the url. Join on the
sample ``key``, the ``sha256`` of the image bytes as stored, or the ``url``; a sample with no row is a failure counted
as ``not_in_parquet`` (and retried on the next run, for instance after adding parquet files). Only the join column
and the caption column are read (pyarrow), and held in memory as one dictionary: give the parquet files that cover
your shards (the release is split like the image shards), not all 1.3B rows.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from typing import Any, Dict, List, Optional

from harness_infra.errors import ConfigError
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


class PrecomputedCaptioner:
    """Captions looked up in parquet files by key, sha256 or url."""

    def __init__(self, cfg: Any) -> None:
        import pyarrow.parquet as pq

        self.cfg = cfg
        pre = cfg.precomputed
        self.files = parquet_files(list(pre.parquet))
        self.table: Dict[str, Optional[str]] = {}
        for path in self.files:
            columns = pq.read_schema(path).names
            missing = [c for c in (pre.join_on, pre.column) if c not in columns]
            if missing:
                raise ConfigError(f"recaption.precomputed: {path} has no column {missing[0]!r} (columns: {', '.join(columns)})")
            part = pq.read_table(path, columns=[pre.join_on, pre.column]).to_pydict()
            self.table.update(zip((str(v) for v in part[pre.join_on]), part[pre.column]))
        log.info("precomputed captions: %d rows from %d parquet files, joined on %s", len(self.table), len(self.files), pre.join_on)
        self.identity = {"captioner": f"precomputed:{pre.column}", "join_on": pre.join_on,
                         "weights_sha256": sha256_json([weights_identity(f)["weights_sha256"] for f in self.files]),
                         "files": [os.path.basename(f) for f in self.files], "prompt": None, "decoding": "released captions"}

    def join_value(self, item: Item) -> Optional[str]:
        """The item's value of the join column."""
        join = self.cfg.precomputed.join_on
        if join == "key":
            return item.key
        if join == "sha256":
            return hashlib.sha256(item.image_bytes).hexdigest() if item.image_bytes is not None else None
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
