"""``python -m evals.run +experiment=NAME [key=value ...]``: the harness's entry point, as the project card spells it;
a thin alias of ``pipeline.cli`` (also installed as the ``recap-harness`` command).

Examples::

    python -m evals.run +experiment=clip_mix_0.8                         # the embedded default, p = 0.8
    python -m evals.run -m +experiment=clip_mix mix.p=0,0.2,0.5,0.8,1     # a sweep over p, one job after another
    python -m evals.run -m +experiment=clip_mix mix.p=0,1 hydra/launcher=joblib   # through a Hydra launcher
    python -m evals.run --help                                            # config groups and options

p (``mix.p``) is the probability of the ORIGINAL caption per sample.

The front door is ``pipeline.cli`` (the top layer); this module is reached only as a command and finds it at run
time, so ``evals`` stays one package on the families' layer (pyproject's import-linter contract).
"""

import importlib
import sys

if __name__ == "__main__":
    sys.exit(importlib.import_module("pipeline.cli").main())
