"""Comparison tables, plots and the report of published runs (``python -m report.tables``), one layer below the
pipeline that runs the stages and above the families and evaluations whose records it reads."""
