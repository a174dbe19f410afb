"""Evaluations and the harness's entry point.

``evals.run``: ``python -m evals.run`` (a thin shell over ``pipeline.cli``). ``evals.tables``: comparison tables and
plots from published records (``python -m evals.tables``). ``evals.tasks``: the registered tasks (zero-shot
classification, retrieval, caption diagnostics). ``evals.results``: task results, bootstrap and paired tests, records.
This package file imports nothing, so each of those sits in its own layer (see pyproject's import-linter contracts).
"""
