"""The checks a command's overrides pass before Hydra launches anything: Hydra's grammar (with the quoted form of a
rejected value), the experiment's name and its ``+``, a sweep without ``-m``, and, for a sweep, every job composed
and validated (``prevalidate``). Each failure is one ``ConfigError`` line that says what to do.
"""

from __future__ import annotations

import difflib
import itertools
import os
from typing import Any, Dict, List, Tuple

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from harness_infra.errors import ConfigError, one_line, require
from harness_infra.stagecache import canonical
from pipeline.messages import explain
from pipeline.schema import HarnessConfig, validate

CONF_DIR = os.environ.get(
    "RECAP_CONF_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
)


def experiment_names() -> List[str]:
    """The experiments a run can pick: the files of conf/experiment, without ``.yaml``."""
    return sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "experiment")) if f.endswith(".yaml"))


def check_experiment(overrides: List[str]) -> None:
    """Fail fast, in one line, on an experiment name with no file in conf/experiment, or an experiment given without
    ``+`` (Hydra reads ``experiment=NAME`` as a change of a group the defaults do not list)."""
    names = experiment_names()
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") != "experiment" or not value:
            continue
        for name in value.split(","):
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                raise ConfigError(
                    f"unknown experiment {name!r}; choose one of {', '.join(names)}"
                    + (f" (did you mean {close[0]}?)" if close else "")
                    + ("" if key.startswith("+") else f"; to name a run of the base config, write run.name={name}")
                )
            require(key.startswith("+"), f"{override}: experiments are added to the config, write +experiment={value}")


def require_experiment(overrides: List[str], harness: HarnessConfig) -> None:
    """A run that goes past the data stage needs a chosen experiment (``+experiment=NAME``), or a name given on purpose
    to a run of the base config composed from groups (``run.name=NAME``). Without either, ``python -m evals.run
    mix.p=0.5`` would train and publish a run called "default"; building shards alone (``run.stop_after=data``) needs
    none. ``run.name`` with an experiment is refused (the experiment labels its runs)."""
    keys = {o.partition("=")[0].lstrip("+") for o in overrides}
    require(
        not {"experiment", "run.name"} <= keys,
        "run.name names a run composed without an experiment; +experiment=NAME labels its runs itself: drop one",
    )
    if keys & {"experiment", "run.name"}:
        return
    stages = harness.run.stages
    walked = stages[: stages.index(harness.run.stop_after) + 1] if harness.run.stop_after else stages
    require(
        walked == ["data"],
        f"no experiment chosen: add +experiment=NAME, one of {', '.join(experiment_names())} "
        f"(or, to train the base config composed from groups, name the run: run.name=NAME)",
    )


def parse_overrides(overrides: List[str]) -> List[Any]:
    """Hydra's parsed overrides; a value its grammar rejects is a one-line error that names the override and shows the
    quoted form (braces, ``=``, spaces: ``'data.train_shards="/d/train-{000000..000099}.tar"'`` in a shell)."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except OverrideParseException:
        for override in overrides:
            try:
                parser.parse_overrides([override])
            except OverrideParseException as exc:
                key, _, value = override.partition("=")
                raise ConfigError(
                    f"{override}: Hydra's override grammar rejects this value ({one_line(exc)}); quote it for "
                    f"Hydra inside the shell's quotes: '{key}=\"{value}\"'"
                ) from None
        raise
    for before, override in zip(parsed, parsed[1:]):  # Hydra keeps the last of repeated keys, so a shell's expansion of
        key = override.get_key_element()  # unquoted braces or a glob (adjacent words) would train on one shard
        if key == before.get_key_element() and override.input_line != before.input_line:
            raise ConfigError(
                f"{key} is given twice in a row ({before.input_line}, {override.input_line}): the shell expanded "
                f"unquoted braces or a glob into one word per value; quote the override, '{key}=\"...\"'"
            )
    return parsed


def sweep_jobs(overrides: List[str], multirun: bool) -> List[List[str]]:
    """Override lists of every job: with -m, the cartesian product of the discrete sweeps (``a,b``, ``range``), in the order
    Hydra's basic sweeper launches them (keys in command-line order, a repeated key's last value kept); else one job.

    Hydra's public override parser gives each override's sweep values (``Override.sweep_string_iterator``). A sweep
    value without ``-m`` is a one-line error that says to add it; an interval sweep (which only a sweeper plugin
    expands) is one too.
    """
    parsed = parse_overrides(overrides)
    if not multirun:
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps:
            raise ConfigError(f"{sweeps[0]} is a sweep; add -m to run one job per value")
        return [overrides]
    choices: Dict[str, List[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise ConfigError(
                f"{override.input_line}: the basic sweeper expands only discrete sweeps (a,b,c; range; choice); "
                "use a sweeper plugin (hydra/sweeper=...) for an interval"
            )
    return [list(job) for job in itertools.product(*choices.values())]


def compose_config(overrides: List[str]) -> Tuple[HarnessConfig, Dict[str, Any]]:
    """Compose conf/config.yaml with ``overrides`` (compose API); return the validated config and its resolved dict."""
    check_experiment(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(explain(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    harness = validate(cfg)
    return harness, canonical(harness)  # the published config is the typed one (eval tasks with their kind's defaults)


def prevalidate(overrides: List[str], multirun: bool) -> int:
    """Compose and validate every job before Hydra launches any; returns the number of jobs.

    Hydra then composes each job again in its launcher: the price (one composition, 0.57 s measured on two busy cores) of a refused
    command leaving nothing behind, since Hydra creates a job's run directory before the job's function could
    validate it, and of a sweep's last bad value stopping it before its first job trains."""
    job_overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    sweeper_is_basic = not any(o.lstrip("+~").startswith("hydra/sweeper") for o in overrides)
    jobs = sweep_jobs(job_overrides, multirun) if sweeper_is_basic else []
    for job in jobs:
        harness, _ = compose_config(job)
        require_experiment(job, harness)
    return len(jobs)
