"""The command line of ``python -m evals.run``: Hydra's own entry point, launchers and sweeps, with one-line errors.

``main`` hands the arguments to a ``hydra.main`` application, so everything Hydra gives an app works: ``--help``
(config groups), ``--cfg job``, ``--info``, ``-m`` sweeps through any launcher plugin
(``hydra/launcher=joblib``, ``submitit_local``, ``submitit_slurm``). A bad override is one line
(``error: mix.p=1.5 is outside [0, 1] ...``, exit status 2) before anything trains; ``--traceback`` (or
``RECAP_TRACEBACK=1``) shows the stack instead. Every job is composed and validated before Hydra launches the
first (``pipeline.overrides.prevalidate``), so a refused command leaves nothing behind and a sweep's last bad value
stops it before its first job trains. The line keeps the reason and says what to do
(``pipeline.messages``: a key not in the config lists its parent's keys; ``pipeline.overrides``: an experiment
without ``+`` or a sweep without ``-m`` says to add it, a value Hydra's grammar rejects shows its quoted form, and a
run past the data stage with no experiment is refused rather than trained and published as "default").

Under torchrun (or ``srun`` tasks, harness_infra.ranks) every rank composes the same config, so the same stage
folders; the Hydra run directory (logs and ``.hydra/``) is fixed once for all ranks from torchrun's run id (SLURM's
job and step ids), and only rank 0 writes ``.hydra/``. Rank 0 logs INFO; the other ranks log WARNING and
above, prefixed with their rank (``rank_logging``).

Importing this module loads no model library (configs are dataclasses that import neither torch nor open_clip), so
``--help`` and a config error answer in about a second.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from harness_infra.errors import BrokenModelError, ConfigError, LabelError, one_line
from harness_infra.ranks import is_main, launcher, rank, world_size
from harness_infra.stagecache import canonical
from pipeline.messages import explain
from pipeline.overrides import CONF_DIR, prevalidate
from pipeline.schema import validate

log = logging.getLogger("pipeline")
USAGE = "usage: python -m evals.run [-m] [--traceback] +experiment=NAME [key=value ...]   (--help lists config groups)"
HYDRA_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--cfg",
    "-c",
    "--resolve",
    "--package",
    "-p",
    "--shell-completion",
    "-sc",
)
USER_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, HydraException, OmegaConfBaseException)


def debug_last(argv: List[str]) -> List[str]:
    """``debug=NAME`` / ``+debug=NAME`` moved to just after ``+experiment=NAME`` as ``+debug=NAME``, so the debug
    overlay (conf/debug/) is applied after the experiment and its short settings win whatever the order typed (Hydra
    applies appended config groups in command-line order). Other arguments keep their order."""
    debug = ["+" + a.lstrip("+") for a in argv if a.lstrip("+").startswith("debug=")]
    rest = [a for a in argv if not a.lstrip("+").startswith("debug=")]
    experiment = [i for i, a in enumerate(rest) if a.lstrip("+").startswith("experiment=")]
    at = (
        experiment[-1] + 1
        if experiment
        else next((i for i, a in enumerate(argv) if a.lstrip("+").startswith("debug=")), 0)
    )
    return rest[:at] + debug + rest[at:]


def torchrun_overrides(overrides: List[str]) -> List[str]:
    """Under torchrun or ``srun``: one Hydra run directory for all ranks (from torchrun's run id, or SLURM's job and
    step ids: ``slurm-JOB.STEP``), ``.hydra/`` written by rank 0 only."""
    if world_size() <= 1:
        return []
    extra = []
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        if launcher() == "slurm":
            run_id = f"slurm-{os.environ.get('SLURM_JOB_ID', '0')}.{os.environ.get('SLURM_STEP_ID', '0')}"
        else:
            run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
            if run_id == "none":
                run_id = f"{os.environ.get('MASTER_ADDR', 'local')}-{os.environ.get('MASTER_PORT', '0')}"
            run_id = f"torchrun-{run_id}"
        extra.append(f"hydra.run.dir=${{run.out_root}}/hydra/${{experiment}}/{run_id}")
    if not is_main():
        extra.append("hydra.output_subdir=null")
    return extra


def run_job(cfg: DictConfig) -> Dict[str, Any]:
    """One Hydra job: validate the composed config and walk its stages. A configuration or input error prints one
    line and ends the job with status 2 (``SystemExit``, which Hydra does not wrap in its own report)."""
    rank_logging()
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
    except (
        LabelError
    ) as exc:  # the run did not do what its label says (realised mixture, coverage, lost samples): exit 4
        if os.environ.get("RECAP_TRACEBACK") == "1":
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(4) from None


def rank_logging() -> None:
    """Under torchrun, after Hydra set up the job's logging: rank 0 logs as configured; every other rank shows WARNING
    and above only, each line prefixed with ``[rank N]`` (``RECAP_LOG_ALL_RANKS=1`` keeps their INFO lines too)."""
    if world_size() <= 1 or is_main():
        return
    level = logging.INFO if os.environ.get("RECAP_LOG_ALL_RANKS") == "1" else logging.WARNING
    for handler in logging.getLogger().handlers:
        handler.setLevel(max(handler.level, level))
        fmt = getattr(handler.formatter, "_fmt", None) or "%(message)s"
        handler.setFormatter(logging.Formatter(f"[rank {rank()}]{fmt}"))


def walk(cfg: DictConfig) -> Dict[str, Any]:
    """Validate the composed config and walk its stages; returns the table written (if any)."""
    from pipeline.runner import run_experiment

    harness = validate(cfg)
    resolved = canonical(harness)  # what the stages use: each eval task typed by its kind, with that kind's defaults
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    p_text = "n/a (concat)" if harness.mix.p_original is None else f"{harness.mix.p_original:g}"
    log.info(
        "experiment %s: p = %s (probability of the ORIGINAL caption), strategy %s, caption reduction %s",
        harness.experiment,
        p_text,
        harness.mix.strategy,
        harness.mix.reduction_label(),
    )
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


def passive_openmp() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` for this process and the jobs and ranks it starts, unless the environment sets it:
    OpenMP threads that sleep rather than spin while idle. On a shared CPU, spinning threads of one process stall
    each other whenever a core is taken by someone else (measured 5x slower training steps on 2 busy cores). OpenMP
    reads it once, when torch loads, so only the entry point sets it (importing a package changes no environment)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code (2 for a configuration or input error, printed in one line)."""
    passive_openmp()
    argv = list(sys.argv[1:] if argv is None else argv)
    show = "--traceback" in argv or os.environ.get("RECAP_TRACEBACK") == "1"
    if show:
        os.environ["RECAP_TRACEBACK"] = "1"  # jobs re-raise with the stack instead of printing one line
    argv = debug_last([a for a in argv if a != "--traceback"])
    hydra_only = any(a.split("=")[0] in HYDRA_FLAGS for a in argv)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        unknown = [
            a
            for a in argv
            if a.startswith("-") and a not in ("-m", "--multirun") and a.split("=")[0] not in HYDRA_FLAGS
        ]
        if unknown and not hydra_only:
            raise ConfigError(f"unknown option {unknown[0]!r}; {USAGE}")
        inspect = [
            a.split("=")[0]
            for a in argv
            if a.split("=")[0] in ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")
        ]
        if multirun and inspect:  # Hydra raises a ValueError with a stack for this pair
            flag = inspect[0]
            raise ConfigError(
                f"{flag} inspects one job, -m runs a sweep: drop -m and give one value per key (e.g. mix.p=0) to inspect a sweep's job"
            )
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
