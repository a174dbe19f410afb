"""Distributed set-up under torchrun or SLURM: ranks from harness_infra.ranks (torchrun's RANK / WORLD_SIZE /
LOCAL_RANK, else SLURM's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID).

Single node: ``torchrun --nproc_per_node=N -m evals.run ...``. Several nodes: the same on every node with
``--nnodes`` and ``--rdzv_backend=c10d --rdzv_endpoint=HOST:PORT``. Under SLURM without torchrun (``srun``, one task
per GPU) the group meets at the first host of ``SLURM_JOB_NODELIST`` (harness_infra.slurm.rendezvous). Without
either the trainer runs as one process. The run directory is not derived here: every rank gets the same ``out_dir``.
"""

from __future__ import annotations

import datetime
import inspect
import logging
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from harness_infra import ranks, slurm

log = logging.getLogger(__name__)


@dataclass
class DistEnv:
    """This process's place in the job and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes checkpoints and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def pick_device(preference: str, local_rank: int) -> torch.device:
    """``auto``: this rank's GPU when CUDA is available, else CPU; ``cpu``/``cuda`` as asked."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device_preference: str = "auto", backend: Optional[str] = None) -> DistEnv:
    """Join the process group of a torchrun or SLURM job (no-op for a single process); see the module docstring.
    Raises ``ConfigError`` for a SLURM job of several tasks with no master host (harness_infra.slurm.rendezvous)."""
    world_size, rank, local_rank = ranks.world_size(), ranks.rank(), ranks.local_rank()
    device = pick_device(device_preference, local_rank)
    owns_group = False
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        init_method = slurm.rendezvous() if ranks.launcher() == "slurm" else "env://"
        dist.init_process_group(
            backend=backend,
            init_method=init_method,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=30),
        )
        owns_group = True
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    log.info("rank %d of %d (local rank %d, from %s) on %s", rank, world_size, local_rank, ranks.launcher(), device)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device, owns_group=owns_group)


def wrap_ddp(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when distributed, else the model itself."""
    if not env.distributed:
        return model
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    # buffers are not re-broadcast at every forward (torch >= 2.14 spells it forward_sync_buffers=False, which still
    # syncs them once at start-up like the parameters; its broadcast_buffers=False is a FutureWarning there)
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP and/or torch.compile wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``value`` over ranks (the value itself when single-process)."""
    if not env.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / env.world_size


def all_ranks_have(flag: bool, env: DistEnv) -> bool:
    """True when ``flag`` holds on every rank (used to end an epoch together and avoid DDP deadlocks)."""
    if not env.distributed:
        return flag
    value = torch.tensor([1 if flag else 0], device=env.device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def gather_objects(obj: Any, env: DistEnv) -> List[Any]:
    """``obj`` from every rank, in rank order."""
    if not env.distributed:
        return [obj]
    out: List[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    """Wait for every rank."""
    if env.distributed:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Leave the process group if this trainer created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()
