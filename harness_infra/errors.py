"""The one configuration-error type of the project and its one-line message helpers.

Every bad configuration value (a Hydra override, a dataclass field, a data path) raises ``ConfigError`` with a
message of one line that names the key, e.g. ``mix.p=1.5 is outside [0, 1]``; the entry point prints it as
``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import sys
from typing import Callable


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line that names the key."""


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)


def one_line(exc: BaseException) -> str:
    """The first line of an exception message, without OmegaConf's full-key/object-type trailer."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class BrokenModelError(RuntimeError):
    """A model or a training run produced numbers that cannot be scored: NaN or infinite values, or constant outputs.

    The message is one line that names the model (or run) and the task (or step); the entry point prints it as
    ``error: ...`` and exits with status 3. Never caught to publish a score anyway.
    """


class LabelError(RuntimeError):
    """A run did something other than its label says: a realised caption mixture outside the sampling noise of its p,
    recaption coverage below ``recaption.min_coverage``, a configured caption field missing from the shards, or an
    evaluation that lost more than ``eval.max_lost_share`` of its set.

    The message is one line naming the cause and the counts; the entry point prints it as ``error: ...`` and exits with
    status 4. Nothing of such a run is published.
    """


def cli_main(work: Callable[[], None]) -> None:
    """Run a module CLI's ``work`` as ``python -m evals.run`` ends its jobs: a ConfigError or OSError prints
    ``error: <one line>`` on stderr and exits with status 2, a BrokenModelError with status 3, a LabelError with 4."""
    try:
        work()
    except (ConfigError, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except BrokenModelError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None
    except LabelError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(4) from None
