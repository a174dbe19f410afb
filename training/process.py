"""One training process from start to end, the scaffold every trainer shares (train_clip, train_dit).

``with training_process(...) as process:`` sets the runtime (``training.runtime.runtime``: threads, denormal
flushing, deterministic kernels), joins the process group (``training.distributed.init_distributed``), copies the
trainer's loggers to ``out_dir/train.log`` on rank 0 (``training.runtime.run_logging``) and, on the way out, normal
or not, closes what the run handed to ``process.closing`` (newest first), leaves the process group
(``training.distributed.shutdown``), detaches the log file and restores the runtime settings, in that order.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol, Sequence, TypeVar

from training.distributed import DistEnv, init_distributed, shutdown
from training.runtime import run_logging, runtime


class Closable(Protocol):
    """Anything with a ``close()`` (a ``training.monitor.RunMonitor``)."""

    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


@dataclass(frozen=True)
class TrainingProcess:
    """This process's place in the job (``env``) and the run's resources to close when the process ends."""

    env: DistEnv
    _closers: contextlib.ExitStack

    def closing(self, resource: C) -> C:
        """``resource``, closed (``resource.close()``) when the process ends, before the process group is left."""
        self._closers.callback(resource.close)
        return resource


@contextlib.contextmanager
def training_process(
    out_dir: str,
    threads: Optional[int],
    deterministic: bool,
    device: str,
    backend: Optional[str],
    logger_names: Sequence[str],
) -> Iterator[TrainingProcess]:
    """The runtime, process group and run log of one training run in ``out_dir`` (absolute, the same on every rank).

    ``threads`` / ``deterministic``: ``training.runtime.runtime``; ``device`` (``auto``/``cpu``/``cuda``) and
    ``backend`` (None: nccl on CUDA, else gloo): ``training.distributed.init_distributed``; ``logger_names``: the
    loggers copied to ``out_dir/train.log`` on rank 0. Raises what ``init_distributed`` raises (``ConfigError`` for a
    SLURM job without a master host, ``RuntimeError`` for ``device=cuda`` without CUDA); an error of the body
    propagates after the clean-up.
    """
    with runtime(threads, deterministic):
        env = init_distributed(device, backend)
        with run_logging(out_dir, env, logger_names):
            try:
                with contextlib.ExitStack() as closers:
                    yield TrainingProcess(env, closers)
            finally:
                shutdown(env)
