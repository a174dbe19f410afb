"""``python -m evals.tables``: a command alias of ``python -m report.tables`` (the tables and plots of published
records).

The writer lives in ``report`` (a layer above the families); this module is reached only as a command and finds
it at run time, so ``evals`` stays one package on the families' layer (pyproject's import-linter contract).
"""

import importlib
import sys

if __name__ == "__main__":
    sys.exit(importlib.import_module("report.tables").main())
