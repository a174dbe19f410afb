"""One line for an error a user can fix: Hydra's message with the reason it keeps in the cause, and for a key that
is not in the config, the keys its parent has and the closest one."""

from __future__ import annotations

import difflib

from hydra.errors import HydraException
from omegaconf import DictConfig

from harness_infra.errors import one_line


def explain(exc: BaseException) -> str:
    """One line for an error: the message's first line, plus the reason Hydra keeps in the cause
    ("Could not override 'mix.pp': Key 'pp' is not in struct")."""
    text = one_line(exc)
    options = getattr(exc, "options", None) or getattr(exc.__cause__, "options", None)  # Hydra's MissingConfigException
    if options:
        return f"{text.rstrip('.')}; choose one of {', '.join(sorted(options))}"
    cause = exc.__cause__
    if isinstance(exc, HydraException) and cause is not None:
        reason = one_line(cause)
        if reason and reason not in text:
            text = f"{text.rstrip('.')}: {reason}"
        text += valid_keys_hint(cause)
    return text


def valid_keys_hint(cause: BaseException) -> str:
    """For a key that is not in the config ("Key 'pp' not in 'MixConfig'"): the keys its parent has and the closest
    one (" (mix has: strategy, p, seed, concat_separator; did you mean mix.p?)"); else ""."""
    parent, key, full_key = (
        getattr(cause, "parent_node", None),
        getattr(cause, "key", None),
        getattr(cause, "full_key", None),
    )
    if not isinstance(parent, DictConfig) or not isinstance(key, str) or "not in" not in str(cause):
        return ""
    keys = [str(k) for k in parent.keys() if k != "hydra"]
    if key in keys or not keys:
        return ""
    prefix = str(full_key)[: -len(key)] if full_key and str(full_key).endswith(key) else ""
    close = difflib.get_close_matches(key, keys, n=1)
    guess = f"; did you mean {prefix}{close[0]}?" if close else ""
    return f" ({prefix.rstrip('.') or 'the config'} has: {', '.join(keys)}{guess})"
