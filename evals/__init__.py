"""Evaluations: ``evals.tasks`` (the registered tasks: zero-shot classification, retrieval, caption diagnostics,
text-to-image) and ``evals.results`` (task results, bootstrap intervals and paired tests, records). One package on
the families' layer: it imports no family, and nothing above it (the front door ``python -m evals.run`` and
``python -m evals.tables`` are command aliases of ``pipeline.cli`` and ``report.tables``).
"""
