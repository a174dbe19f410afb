"""Run one experiment end to end: ``python -m evals.run +experiment=NAME [key=value ...]``.

Stages, in order: data (build or locate shards) -> train (train_clip) -> eval (evals) -> tables.
Each stage writes to a folder keyed by its config and inputs and is skipped when complete
(``run.rerun=STAGE`` forces one). ``-m``/``--multirun`` sweeps comma-separated overrides
(``-m +experiment=clip_mix_0.8 mix.p=0,0.5,1``), one job after another, with Hydra's override grammar.
Errors print one line and exit non-zero; ``--traceback`` (or RECAP_TRACEBACK=1) shows the stack.
Under ``torchrun`` every rank composes the same config and so the same folders; rank 0 builds data and
evaluates, all ranks train.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import List, Optional, Tuple

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from captiondata.config import ConfigError
from evals.schema import HarnessConfig, one_line, validate

log = logging.getLogger("evals.run")
CONF_DIR = os.environ.get("RECAP_CONF_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf"))
USAGE = "usage: python -m evals.run [-m|--multirun] [--traceback] +experiment=NAME [key=value ...]"


def parse_argv(argv: List[str]) -> Tuple[bool, bool, List[str]]:
    """(multirun, show_traceback, overrides) from the command line."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    show = any(a == "--traceback" for a in argv) or os.environ.get("RECAP_TRACEBACK") == "1"
    overrides = [a for a in argv if a not in ("-m", "--multirun", "--traceback")]
    unknown = [a for a in overrides if a.startswith("-")]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}; {USAGE}")
    return multirun, show, overrides


def sweep_jobs(overrides: List[str], multirun: bool) -> List[List[str]]:
    """Override lists of every job: the cartesian product of comma-separated values with -m, else one job."""
    if not multirun:
        return [overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(overrides)
    return BasicSweeper.split_arguments(parsed, None)[0]


def check_experiment(overrides: List[str]) -> None:
    """Fail fast, in one line, on an experiment name with no file in conf/experiment."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "experiment" and value and "," not in value:
            if not os.path.isfile(os.path.join(CONF_DIR, "experiment", f"{value}.yaml")):
                names = sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "experiment")) if f.endswith(".yaml"))
                raise ConfigError(f"unknown experiment {value!r}; choose one of {', '.join(names)}")


def compose_config(overrides: List[str]) -> Tuple[HarnessConfig, dict]:
    """Compose conf/config.yaml with ``overrides``; return the validated config and its resolved dict."""
    check_experiment(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(one_line(exc)) from None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return validate(cfg), resolved


def run_job(overrides: List[str]) -> dict:
    """Compose one job's config and walk its stages."""
    from evals.pipeline import run_experiment

    cfg, resolved = compose_config(overrides)
    log.info("experiment %s: p = %s (probability of the ORIGINAL caption), strategy %s", cfg.experiment, cfg.mix.p, cfg.mix.strategy)
    return run_experiment(cfg, resolved, overrides)


def configure_logging() -> None:
    """INFO from this project's packages, WARNING from libraries (open_clip logs its loading at INFO)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("evals", "train_clip", "captiondata"):
        logging.getLogger(name).setLevel(logging.INFO)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    configure_logging()
    show = "--traceback" in argv or os.environ.get("RECAP_TRACEBACK") == "1"
    started = time.perf_counter()
    try:
        multirun, show, overrides = parse_argv(argv)
        jobs = sweep_jobs(overrides, multirun)
        for index, job in enumerate(jobs):
            if multirun:
                log.info("multirun job %d/%d: %s", index + 1, len(jobs), " ".join(job))
            outcome = run_job(job)
        if jobs and os.environ.get("RANK", "0") == "0":
            log.info("done in %.1f s", time.perf_counter() - started)
            print(f"table: {outcome['table']}" if outcome.get("table") else "no table written")
        return 0
    except (ConfigError, FileNotFoundError, FileExistsError, HydraException, OmegaConfBaseException) as exc:
        if show:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
