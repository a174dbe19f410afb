"""The tables stage: rebuild the data set's comparison table, CSV and plots from every published record.

Not cached (it reads every record under ``{run.results_dir}/records``, which other runs add to); rank 0 only; one
job at a time writes (a lock in the records folder), so parallel jobs of a sweep leave the table with every record.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

from harness_infra.locks import exclusive
from pipeline.publish import RECORDS_DIR
from pipeline.registry import RunContext, Stage

log = logging.getLogger(__name__)


def run(ctx: RunContext, out_dir: Optional[str]) -> Dict[str, Any]:
    """Write ``{results_dir}/{data}.md`` (CLIPs) or ``{data}_t2i.md`` (the DiT family), ``.csv`` and the plots."""
    from evals.tables import write_tables

    results = ctx.cfg.run.results_dir
    log.info("tables from %s", os.path.join(results, RECORDS_DIR))
    with exclusive(os.path.join(results, RECORDS_DIR, ".tables.lock")):  # a parallel job's newer records are never dropped
        family = "t2i" if ctx.cfg.trainer == "dit" else "clip"
        return {"table": write_tables(results, ctx.cfg.data.name, family)}


STAGE = Stage(name="tables", needs=("eval",), run=run, ranks="rank0")
