"""``python -m evals.run +experiment=NAME [key=value ...]``: the harness's entry point (a thin shell over pipeline.cli).

Examples::

    python -m evals.run +experiment=clip_mix_0.8                         # the embedded default, p = 0.8
    python -m evals.run -m +experiment=clip_mix mix.p=0,0.2,0.5,0.8,1     # a sweep over p, one job after another
    python -m evals.run -m +experiment=clip_mix mix.p=0,1 hydra/launcher=joblib   # through a Hydra launcher
    python -m evals.run --help                                            # config groups and options

p (``mix.p``) is the probability of the ORIGINAL caption per sample.
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
