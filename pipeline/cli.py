"""The command line of ``python -m evals.run``: Hydra's own entry point, launchers and sweeps, with one-line errors.

``main`` hands the arguments to a ``hydra.main`` application, so everything Hydra gives an app works: ``--help``
(config groups), ``--cfg job``, ``--info``, ``-m`` sweeps through any launcher plugin
(``hydra/launcher=joblib``, ``submitit_local``, ``submitit_slurm``). Before Hydra starts, every job of the command
is composed and validated once (the basic sweeper's cartesian product), so a bad override is one line
(``error: mix.p=1.5 is outside [0, 1] ...``, exit status 2) before anything is launched; ``--traceback`` (or
``RECAP_TRACEBACK=1``) shows the stack instead. The line keeps the reason and says what to do: a key not in the
config lists its parent's keys (``valid_keys_hint``), an experiment without ``+`` or a sweep
without ``-m`` says to add it (``check_experiment``, ``sweep_jobs``), a value Hydra's grammar rejects (braces, ``=``)
shows its quoted form (``parse_overrides``), and a run past the data stage with no experiment is refused rather than
trained and published as "default" (``require_experiment``).

Under torchrun (or ``srun`` tasks, harness_infra.ranks) every rank composes the same config, so the same stage
folders; the Hydra run directory (logs and ``.hydra/``) is fixed once for all ranks from torchrun's run id (SLURM's
job and step ids), and only rank 0 writes ``.hydra/``. Rank 0 logs INFO; the other ranks log WARNING and
above, prefixed with their rank (``rank_logging``).

Importing this module loads no model library (configs are dataclasses that import neither torch nor open_clip), so
``--help`` and a config error answer in about a second.
"""

from __future__ import annotations

import difflib
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
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from harness_infra.errors import BrokenModelError, ConfigError, LabelError, one_line, require
from harness_infra.ranks import is_main, launcher, rank, world_size
from harness_infra.stagecache import canonical
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
        text += valid_keys_hint(cause)
    return text


def valid_keys_hint(cause: BaseException) -> str:
    """For a key that is not in the config ("Key 'pp' not in 'MixConfig'"): the keys its parent has and the closest
    one (" (mix has: strategy, p, seed, concat_separator; did you mean mix.p?)"); else ""."""
    parent, key, full_key = getattr(cause, "parent_node", None), getattr(cause, "key", None), getattr(cause, "full_key", None)
    if not isinstance(parent, DictConfig) or not isinstance(key, str) or "not in" not in str(cause):
        return ""
    keys = [str(k) for k in parent.keys() if k != "hydra"]
    if key in keys or not keys:
        return ""
    prefix = str(full_key)[:-len(key)] if full_key and str(full_key).endswith(key) else ""
    close = difflib.get_close_matches(key, keys, n=1)
    guess = f"; did you mean {prefix}{close[0]}?" if close else ""
    return f" ({prefix.rstrip('.') or 'the config'} has: {', '.join(keys)}{guess})"


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
                raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(names)}"
                                  + (f" (did you mean {close[0]}?)" if close else "")
                                  + ("" if key.startswith("+") else f"; to name a run of the base config, write run.name={name}"))
            require(key.startswith("+"), f"{override}: experiments are added to the config, write +experiment={value}")


def require_experiment(overrides: List[str], harness: HarnessConfig) -> None:
    """A run that goes past the data stage needs a chosen experiment (``+experiment=NAME``), or a name given on purpose
    to a run of the base config composed from groups (``run.name=NAME``). Without either, ``python -m evals.run
    mix.p=0.5`` would train and publish a run called "default"; building shards alone (``run.stop_after=data``) needs
    none. ``run.name`` with an experiment is refused (the experiment labels its runs)."""
    keys = {o.partition("=")[0].lstrip("+") for o in overrides}
    require(not {"experiment", "run.name"} <= keys, "run.name names a run composed without an experiment; "
                                                     "+experiment=NAME labels its runs itself: drop one")
    if keys & {"experiment", "run.name"}:
        return
    stages = harness.run.stages
    walked = stages[:stages.index(harness.run.stop_after) + 1] if harness.run.stop_after else stages
    require(walked == ["data"], f"no experiment chosen: add +experiment=NAME, one of {', '.join(experiment_names())} "
                                f"(or, to train the base config composed from groups, name the run: run.name=NAME)")


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
                raise ConfigError(f"{override}: Hydra's override grammar rejects this value ({one_line(exc)}); quote it for "
                                  f"Hydra inside the shell's quotes: '{key}=\"{value}\"'") from None
        raise
    for before, override in zip(parsed, parsed[1:]):  # Hydra keeps the last of repeated keys, so a shell's expansion of
        key = override.get_key_element()             # unquoted braces or a glob (adjacent words) would train on one shard
        if key == before.get_key_element() and override.input_line != before.input_line:
            raise ConfigError(f"{key} is given twice in a row ({before.input_line}, {override.input_line}): the shell expanded "
                              f"unquoted braces or a glob into one word per value; quote the override, '{key}=\"...\"'")
    return parsed


def sweep_jobs(overrides: List[str], multirun: bool) -> List[List[str]]:
    """Override lists of every job: the cartesian product of comma-separated values with -m, else one job.

    A sweep value without ``-m`` is a one-line error that says to add it.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = parse_overrides(overrides)
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
    harness = validate(cfg)
    return harness, canonical(harness)  # the published config is the typed one (eval tasks with their kind's defaults)


def prevalidate(overrides: List[str], multirun: bool) -> int:
    """Compose and validate every job before Hydra launches any; returns the number of jobs."""
    job_overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    sweeper_is_basic = not any(o.lstrip("+~").startswith("hydra/sweeper") for o in overrides)
    jobs = sweep_jobs(job_overrides, multirun) if sweeper_is_basic else []
    for job in jobs:
        harness, _ = compose_config(job)
        require_experiment(job, harness)
    return len(jobs)


def debug_last(argv: List[str]) -> List[str]:
    """``debug=NAME`` / ``+debug=NAME`` moved to just after ``+experiment=NAME`` as ``+debug=NAME``, so the debug
    overlay (conf/debug/) is applied after the experiment and its short settings win whatever the order typed (Hydra
    applies appended config groups in command-line order). Other arguments keep their order."""
    debug = ["+" + a.lstrip("+") for a in argv if a.lstrip("+").startswith("debug=")]
    rest = [a for a in argv if not a.lstrip("+").startswith("debug=")]
    experiment = [i for i, a in enumerate(rest) if a.lstrip("+").startswith("experiment=")]
    at = experiment[-1] + 1 if experiment else next((i for i, a in enumerate(argv) if a.lstrip("+").startswith("debug=")), 0)
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
    except LabelError as exc:  # the run did not do what its label says (realised mixture, coverage, lost samples): exit 4
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
    argv = debug_last([a for a in argv if a != "--traceback"])
    hydra_only = any(a.split("=")[0] in HYDRA_FLAGS for a in argv)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        unknown = [a for a in argv if a.startswith("-") and a not in ("-m", "--multirun") and a.split("=")[0] not in HYDRA_FLAGS]
        if unknown and not hydra_only:
            raise ConfigError(f"unknown option {unknown[0]!r}; {USAGE}")
        inspect = [a.split("=")[0] for a in argv if a.split("=")[0] in ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")]
        if multirun and inspect:  # Hydra raises a ValueError with a stack for this pair
            flag = inspect[0]
            raise ConfigError(f"{flag} inspects one job, -m runs a sweep: drop -m and give one value per key (e.g. mix.p=0) to inspect a sweep's job")
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
