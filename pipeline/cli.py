"""The command line of ``python -m evals.run``: Hydra's own entry point, launchers and sweeps, with one-line errors.

``main`` hands the arguments to a ``hydra.main`` application, so everything Hydra gives an app works: ``--help``
(config groups), ``--cfg job``, ``--info``, ``-m`` sweeps through any launcher plugin
(``hydra/launcher=joblib``, ``submitit_local``, ``submitit_slurm``). Before Hydra starts, every job of the command
is composed and validated once (the basic sweeper's cartesian product), so a bad override is one line
(``error: mix.p=1.5 is outside [0, 1] ...``, exit status 2) before anything is launched; ``--traceback`` (or
``RECAP_TRACEBACK=1``) shows the stack instead.

Under torchrun every rank composes the same config, so the same stage folders; the Hydra run directory (logs and
``.hydra/``) is fixed once for all ranks from torchrun's run id, and only rank 0 writes ``.hydra/``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness_infra.errors import BrokenModelError, ConfigError, one_line
from harness_infra.ranks import is_main, rank, world_size
from pipeline.schema import HarnessConfig, validate

log = logging.getLogger("pipeline")
CONF_DIR = os.environ.get("RECAP_CONF_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf"))
USAGE = "usage: python -m evals.run [-m] [--traceback] +experiment=NAME [key=value ...]   (--help lists config groups)"
HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve", "--package", "-p", "--shell-completion", "-sc")
USER_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, HydraException, OmegaConfBaseException)


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
    return text


def check_experiment(overrides: List[str]) -> None:
    """Fail fast, in one line, on an experiment name with no file in conf/experiment (or given without ``+``)."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") != "experiment" or not value:
            continue
        if not key.startswith("+"):
            raise ConfigError(f"{override}: experiments are added to the config, write +experiment={value}")
        names = sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "experiment")) if f.endswith(".yaml"))
        for name in value.split(","):
            if name not in names:
                raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(names)}")


def sweep_jobs(overrides: List[str], multirun: bool) -> List[List[str]]:
    """Override lists of every job: the cartesian product of comma-separated values with -m, else one job.

    A sweep value without ``-m`` is a one-line error that says to add it.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(overrides)
    if not multirun:
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps:
            raise ConfigError(f"{sweeps[0]} is a sweep; add -m to run one job per value")
        return [overrides]
    return BasicSweeper.split_arguments(parsed, None)[0]


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
    return validate(cfg), OmegaConf.to_container(cfg, resolve=True)


def prevalidate(overrides: List[str], multirun: bool) -> int:
    """Compose and validate every job before Hydra launches any; returns the number of jobs."""
    job_overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    sweeper_is_basic = not any(o.lstrip("+~").startswith("hydra/sweeper") for o in overrides)
    jobs = sweep_jobs(job_overrides, multirun) if sweeper_is_basic else []
    for job in jobs:
        compose_config(job)
    return len(jobs)


def torchrun_overrides(overrides: List[str]) -> List[str]:
    """Under torchrun: one Hydra run directory for all ranks (from the run id), ``.hydra/`` written by rank 0 only."""
    if world_size() <= 1:
        return []
    extra = []
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if run_id == "none":
            run_id = f"{os.environ.get('MASTER_ADDR', 'local')}-{os.environ.get('MASTER_PORT', '0')}"
        extra.append(f"hydra.run.dir=${{run.out_root}}/hydra/${{experiment}}/torchrun-{run_id}")
    if not is_main():
        extra.append("hydra.output_subdir=null")
    return extra


def run_job(cfg: DictConfig) -> Dict[str, Any]:
    """One Hydra job: validate the composed config and walk its stages. A configuration or input error prints one
    line and ends the job with status 2 (``SystemExit``, which Hydra does not wrap in its own report)."""
    try:
        return walk(cfg)
    except USER_ERRORS as exc:
        if os.environ.get("RECAP_TRACEBACK") == "1":
            raise
        print(f"error: {explain(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except BrokenModelError as exc:  # NaN / constant outputs, a diverged step: never a score, exit 3
        if os.environ.get("RECAP_TRACEBACK") == "1":
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None


def walk(cfg: DictConfig) -> Dict[str, Any]:
    """Validate the composed config and walk its stages; returns the table written (if any)."""
    from pipeline.runner import run_experiment

    harness = validate(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    p_text = "n/a (concat)" if harness.mix.p_original is None else f"{harness.mix.p_original:g}"
    log.info("experiment %s: p = %s (probability of the ORIGINAL caption), strategy %s", harness.experiment, p_text, harness.mix.strategy)
    started = time.perf_counter()
    outcome = run_experiment(harness, resolved, overrides)
    if is_main():
        log.info("done in %.1f s", time.perf_counter() - started)
        print(f"table: {outcome['table']}" if outcome.get("table") else "no table written", flush=True)
    return {"table": outcome.get("table")}


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def hydra_app(cfg: DictConfig) -> Dict[str, Any]:
    """The Hydra application: run one job (Hydra calls it once per job of a sweep, through the chosen launcher)."""
    return run_job(cfg)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code (2 for a configuration or input error, printed in one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show = "--traceback" in argv or os.environ.get("RECAP_TRACEBACK") == "1"
    if show:
        os.environ["RECAP_TRACEBACK"] = "1"  # jobs re-raise with the stack instead of printing one line
    argv = [a for a in argv if a != "--traceback"]
    hydra_only = any(a.split("=")[0] in HYDRA_FLAGS for a in argv)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        unknown = [a for a in argv if a.startswith("-") and a not in ("-m", "--multirun") and a.split("=")[0] not in HYDRA_FLAGS]
        if unknown and not hydra_only:
            raise ConfigError(f"unknown option {unknown[0]!r}; {USAGE}")
        if not hydra_only:
            prevalidate(overrides, multirun)
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # errors reach the handler below instead of Hydra's report
        GlobalHydra.instance().clear()
        saved = sys.argv
        sys.argv = [saved[0] if saved else "evals.run", *argv, *torchrun_overrides(overrides)]
        try:
            hydra_app()
        except SystemExit as done:  # --help, --cfg ... and a job's one-line error end with SystemExit
            return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        finally:
            sys.argv = saved
        return 0
    except USER_ERRORS as exc:
        if show:
            raise
        print(f"error: {explain(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
