"""What a run reports: a tqdm bar (loss, samples/s, ETA), TensorBoard scalars, optionally Weights & Biases,
``metrics.jsonl`` and epoch summaries.

W&B (``train.wandb_project``, as open_clip_train's ``--report-to wandb --wandb-project-name``) gets the same scalars
under the same names as TensorBoard (``train/loss``, ``val/NAME``, ``data/original_fraction``) at the same steps. Its
run id is derived from the run folder, so a resumed run continues its W&B run (``resume="allow"``); its files go
under the run folder (``wandb/``). ``WANDB_MODE=offline`` works without a server (``wandb sync`` uploads later).

While the bar shows, console log records go through ``tqdm.write`` (``logging_redirect_tqdm`` on the root logger's
console handler), so an INFO line never lands on the bar's line.

``metrics.jsonl`` has one line per log step: step, samples_seen, loss, lr, samples_per_s, logit_scale (plus
stage, epoch and global_batch). ``epochs.jsonl`` has one line per data epoch with the effective global batch,
the realised original-caption fraction (p = probability of the ORIGINAL caption) and skipped-sample counts.
``validation.jsonl`` has one line per validation (a family's held-out scores, e.g. the DiT's x0 errors).
Only rank 0 writes; the logged loss is the mean over ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from harness_infra.atomic import atomic_write_text
from harness_infra.errors import ConfigError
from harness_infra.progress import on_terminal
from training.distributed import DistEnv, all_reduce_mean

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
EPOCHS_FILE = "epochs.jsonl"
VALIDATION_FILE = "validation.jsonl"


def truncate_jsonl(path: str, last_step: int) -> Tuple[List[Dict[str, Any]], int]:
    """Drop lines logged after ``last_step`` (a resumed run re-logs them); (the records kept in order, torn lines dropped).

    A last line that does not parse (a power loss or a full disk mid-append) is dropped, logged and counted; an
    unparseable line before the last raises ValueError naming the file and line number (that is not a torn append).
    """
    if not os.path.exists(path):
        return [], 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        numbered = [(number, line) for number, line in enumerate(handle, 1) if line.strip()]
    lines, torn = [], 0
    for index, (number, line) in enumerate(numbered):
        try:
            lines.append((line if line.endswith("\n") else line + "\n", json.loads(line)))
        except json.JSONDecodeError as exc:
            if index < len(numbered) - 1:
                raise ValueError(
                    f"{path}:{number}: not a JSON line ({exc.msg}); only a torn last line is dropped"
                ) from None
            torn = 1
            log.warning(
                "%s: dropped 1 torn last line (line %d, %d characters; an interrupted append)", path, number, len(line)
            )
    kept = [(line, record) for line, record in lines if record.get("step", 0) <= last_step]
    atomic_write_text(path, "".join(line for line, _ in kept))
    return [record for _, record in kept], torn


def start_wandb(project: str, out_dir: str, config: Optional[Dict[str, Any]] = None) -> Any:
    """A W&B run of ``project`` for the run folder ``out_dir`` (id: sha256 of its absolute path, 16 hex digits).
    Raises ConfigError (one line) when wandb is not installed."""
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            f"train.wandb_project={project!r} needs wandb: pip install 'recap-harness[wandb]' (or pip install wandb)"
        ) from None
    folder = os.path.abspath(out_dir)
    return wandb.init(
        project=project,
        id=hashlib.sha256(folder.encode()).hexdigest()[:16],
        name=os.path.basename(folder),
        dir=folder,
        resume="allow",
        config=config or {},
        reinit="finish_previous",
    )


def read_epochs(out_dir: str) -> List[Dict[str, Any]]:
    """The epoch reports of a finished run in ``out_dir`` (``epochs.jsonl``; [] when it has none), in order."""
    path = os.path.join(out_dir, EPOCHS_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class RunMonitor:
    """Progress bar, TensorBoard and jsonl metrics for one training run (all ranks call it; rank 0 writes)."""

    def __init__(
        self,
        out_dir: str,
        env: DistEnv,
        total_steps: int,
        start_step: int,
        samples_seen: int,
        log_every: int,
        tensorboard: bool = True,
        progress_bar: bool = True,
        wandb_project: Optional[str] = None,
        run_config: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.env, self.log_every, self.writes = env, log_every, env.is_main
        self.metrics_path = os.path.join(out_dir, METRICS_FILE)
        self.epochs_path = os.path.join(out_dir, EPOCHS_FILE)
        self.validation_path = os.path.join(out_dir, VALIDATION_FILE)
        self.writer = None
        self.wandb = None
        self.reported: Set[Tuple[int, int]] = set()  # (stage, epoch) already in epochs.jsonl
        self.torn_lines: Dict[str, int] = {}  # jsonl file name -> torn last lines dropped on resume (the run's info)
        if self.writes:
            os.makedirs(out_dir, exist_ok=True)
            kept = {}
            for path in (self.metrics_path, self.epochs_path, self.validation_path):
                kept[path], torn = truncate_jsonl(path, start_step)
                if torn:
                    self.torn_lines[os.path.basename(path)] = torn
            self.reported = {(int(r.get("stage", 0)), int(r["epoch"])) for r in kept[self.epochs_path]}
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=start_step + 1)
            if wandb_project:
                self.wandb = start_wandb(wandb_project, out_dir, run_config)
        # a bar only on a terminal: redirected to a file, its carriage-return updates would bury the log lines
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            disable=not (self.writes and progress_bar and on_terminal(sys.stderr)),
        )
        self.console = contextlib.ExitStack()  # while the bar shows, console log lines print above it (tqdm.write)
        if not self.bar.disable:
            self.console.enter_context(logging_redirect_tqdm())
        self.last_time, self.last_samples = time.perf_counter(), samples_seen
        self.step = start_step

    def _append(self, path: str, record: Dict[str, Any]) -> None:
        """Append one json line."""
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def step_done(
        self,
        step: int,
        samples_seen: int,
        loss: torch.Tensor,
        lr: float,
        scalars: Dict[str, Any],
        extra: Dict[str, Any],
        force: bool = False,
    ) -> Optional[Dict[str, Any]]:
        """Advance the bar; on log steps (every ``log_every`` and when ``force``) record metrics. Collective on log steps.

        ``scalars``: the family's own curves (CLIP: ``logit_scale``), logged to jsonl and TensorBoard as ``train/NAME``;
        ``extra``: context written to jsonl only (stage, epoch, global batch).
        """
        self.step = step
        self.bar.update(1)
        if step % self.log_every != 0 and not force:
            return None
        loss_value = float(all_reduce_mean(loss.float(), self.env))
        now = time.perf_counter()
        rate = (samples_seen - self.last_samples) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_samples = now, samples_seen
        named = {name: float(value) for name, value in scalars.items()}
        record = {
            "step": step,
            "samples_seen": samples_seen,
            "loss": loss_value,
            "lr": lr,
            "samples_per_s": rate,
            **named,
            **extra,
        }
        if self.writes:
            self._append(self.metrics_path, record)
            self.bar.set_postfix(loss=f"{loss_value:.4f}", samples_per_s=f"{rate:.1f}", refresh=False)
            self._scalars({f"train/{key}": record[key] for key in ("loss", "lr", "samples_per_s", *named)}, step)
            log.debug("step %d: %s", step, record)
        return record

    def epoch_end(self, epoch: int, stats: Dict[str, Any], global_batch: str, stage: int) -> None:
        """Log one data epoch: effective global batch, realised original fraction, skipped counts. An epoch already in
        ``epochs.jsonl`` is not written again: a run resumed from a checkpoint taken after the epoch's last batch (or, with
        gradient accumulation, a few batches before it) re-reaches an end its process before the resume already reported."""
        if not self.writes:
            return
        if (stage, epoch) in self.reported:
            log.info("epoch %d (stage %d) was reported before the resume (epochs.jsonl); not again", epoch, stage)
            return
        self.reported.add((stage, epoch))
        fraction = stats.get("original_fraction")
        fraction_text = "n/a" if fraction is None else f"{fraction:.4f}"
        read = stats.get("samples_read")
        read_text = f" ({read} read)" if read is not None and read != stats.get("samples") else ""
        if stats.get("resumed_at_batch"):
            read_text += f" (the run resumed at batch {stats['resumed_at_batch']}: trained counts start there)"
        log.info(
            "epoch %d done (stage %d, step %d): global batch %s, %s samples trained%s, realised original fraction %s "
            "(p = P(original), over trained samples), skipped %s",
            epoch,
            stage,
            self.step,
            global_batch,
            stats.get("samples"),
            read_text,
            fraction_text,
            stats.get("skipped") or "none",
        )
        self._append(
            self.epochs_path, {"epoch": epoch, "stage": stage, "step": self.step, "global_batch": global_batch, **stats}
        )
        if fraction is not None:
            self._scalars(
                {"data/original_fraction": fraction, "data/skipped_total": stats.get("skipped_total", 0)}, self.step
            )

    def validation(self, step: int, samples_seen: int, values: Dict[str, float]) -> None:
        """Record held-out scores of ``step`` (rank 0 computes them): ``validation.jsonl``, TensorBoard ``val/NAME``
        and one log line."""
        if not self.writes:
            return
        self._append(self.validation_path, {"step": step, "samples_seen": samples_seen, **values})
        self._scalars({f"val/{name}": value for name, value in values.items()}, step)
        log.info(
            "validation at step %d: %s",
            step,
            ", ".join(f"{name} {value:.4f}" for name, value in values.items() if "@" not in name),
        )

    def _scalars(self, values: Dict[str, Any], step: int) -> None:
        """The same named scalars to TensorBoard and W&B (each when on), at ``step``."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log({name: float(value) for name, value in values.items()}, step=step)

    def close(self) -> None:
        """Flush and close the bar, TensorBoard and W&B; console logging goes back to its own handlers."""
        self.bar.close()
        self.console.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
