"""What every benchmark script shares: ``run_script(main)`` ends a script in one line on a user's mistake.

``python benchmarks/NAME.py`` puts this folder first on the import path, so each script imports it as ``_common``.
A configuration error, missing data (``$RECAP_DATA_ROOT``, a shard folder) or a missing optional package prints
``error: ...`` on one line and exits with status 2, as ``python -m evals.run`` does; ``--traceback`` (or
``RECAP_TRACEBACK=1``) shows the stack instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn

from harness_infra.errors import ConfigError, one_line

PIP_NAMES = {
    "clip_benchmark": "clip-benchmark",
    "sklearn": "scikit-learn",
    "open_clip_train": "open_clip_torch[training]",
    "sentence_transformers": "sentence-transformers",
    "vllm": "vllm",
}  # module -> what to pip install


def run_script(main: Callable[[], object]) -> NoReturn:
    """Run a benchmark's ``main()`` and exit: 0 when it returns, 2 with one ``error:`` line on a user's mistake."""
    show = "--traceback" in sys.argv or os.environ.get("RECAP_TRACEBACK") == "1"
    sys.argv = [a for a in sys.argv if a != "--traceback"]
    try:
        main()
    except (ConfigError, FileNotFoundError, NotADirectoryError) as exc:
        if show:
            raise
        fail(one_line(exc))
    except ModuleNotFoundError as exc:
        if show or not exc.name:
            raise
        fail(
            f"{one_line(exc)}: this benchmark needs it (pip install {PIP_NAMES.get(exc.name.split('.')[0], exc.name)})"
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
