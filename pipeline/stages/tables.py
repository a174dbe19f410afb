"""The tables stage: rebuild the data set's comparison table, CSV and plots from every published record.

Not cached (it reads every record under ``{run.results_dir}/records``, which other runs add to); rank 0 only.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

from pipeline.publish import RECORDS_DIR
from pipeline.registry import RunContext, Stage

log = logging.getLogger(__name__)


def run(ctx: RunContext, out_dir: Optional[str]) -> Dict[str, Any]:
    """Write ``{results_dir}/{data}.md``, ``.csv`` and the plots."""
    from evals.tables import write_tables

    log.info("tables from %s", os.path.join(ctx.cfg.run.results_dir, RECORDS_DIR))
    return {"table": write_tables(ctx.cfg.run.results_dir, ctx.cfg.data.name)}


STAGE = Stage(name="tables", needs=("eval",), run=run, ranks="rank0")
