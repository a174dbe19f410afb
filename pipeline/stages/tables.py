"""The tables stage: rebuild the data set's comparison table, CSV and plots from every published record.

Not cached (it reads every record under ``{run.results_dir}/records``, which other runs add to); rank 0 only; one
job at a time writes (the records folder's lock, which publishing holds too), so parallel jobs of a sweep leave the
table with every record; under it the temporary files of a killed table writer are removed first.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from evals.results.records import records_lock
from harness_infra.atomic import clear_partial_files
from harness_infra.locks import exclusive
from pipeline.families import family_of
from pipeline.infos import TablesInfo
from pipeline.publish import RECORDS_DIR
from pipeline.registry import RunContext, Stage

log = logging.getLogger(__name__)


def run(ctx: RunContext, out_dir: Optional[str]) -> TablesInfo:
    """Write ``{results_dir}/{data}.md`` or ``{data}_{kind}.md`` (the family's ``table_kind``), ``.csv`` and the plots."""
    from report.tables import write_tables

    results = ctx.cfg.run.results_dir
    log.info("tables from %s", os.path.join(results, RECORDS_DIR))
    with exclusive(
        records_lock(os.path.join(results, RECORDS_DIR))
    ):  # a parallel job's newer records are never dropped
        clear_partial_files(results)  # tables, CSVs and plots are written only here, under this lock
        return TablesInfo(table=write_tables(results, ctx.cfg.data.name, family_of(ctx.cfg).table_kind))


STAGE = Stage(name="tables", needs=("eval",), output=TablesInfo, run=run, ranks="rank0")
