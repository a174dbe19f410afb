"""SLURM's host lists and the rendezvous address of a job started by ``srun`` (one task per GPU, no torchrun).

A SLURM node list is a comma-separated list of host names, each of which may hold bracketed ranges:
``gpu[001-004,007]``, ``a[1-2],b3``, ``rack1-[01-02]``, ``r[1-2]-n[01-02]`` (several brackets: their product, the
last one varying fastest, as ``scontrol show hostnames`` prints it). Zero padding of a range is kept (``[01-02]``
gives ``01, 02``). The format is SLURM's hostlist expression (``man scontrol``, "show hostnames").

The master of the job is the first host of ``SLURM_JOB_NODELIST``; its port is ``MASTER_PORT`` when set, else
``PORT_BASE + SLURM_JOB_ID % PORT_SPAN`` (so two jobs sharing a node pick different ports), else ``DEFAULT_PORT``.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from typing import List, Mapping, Optional

from harness_infra.errors import ConfigError

DEFAULT_PORT = 29500  # torchrun's default master port, for a SLURM job without SLURM_JOB_ID
PORT_BASE, PORT_SPAN = 20000, 20000  # the port of job J is 20000 + J % 20000 (in [20000, 40000))
_GROUP = re.compile(r"\[([^\[\]]*)\]")


def split_top_level(nodelist: str) -> List[str]:
    """The comma-separated items of ``nodelist`` outside brackets (``a[1,2],b`` -> ``['a[1,2]', 'b']``).
    Raises ``ConfigError`` on unbalanced brackets or an empty item."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(nodelist):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if depth not in (0, 1):
            raise ConfigError(f"SLURM node list {nodelist!r}: unbalanced brackets")
        if char == "," and depth == 0:
            items.append(nodelist[start:i])
            start = i + 1
    items.append(nodelist[start:])
    if depth != 0 or any(not item.strip() for item in items):
        raise ConfigError(f"SLURM node list {nodelist!r}: unbalanced brackets or an empty host")
    return [item.strip() for item in items]


def expand_range(body: str, nodelist: str) -> List[str]:
    """The values of one bracket's body (``001-004,007`` -> ``['001', '002', '003', '004', '007']``), padding kept.
    Raises ``ConfigError`` on a non-numeric or descending range."""
    values = []
    for part in body.split(","):
        low, _, high = part.strip().partition("-")
        high = high or low
        if not (low.isdigit() and high.isdigit()) or int(high) < int(low):
            raise ConfigError(f"SLURM node list {nodelist!r}: bad range {part!r} (expected N or N-M with N <= M)")
        width = len(low) if low.startswith("0") else 0
        values.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return values


def expand_nodelist(nodelist: str) -> List[str]:
    """Every host of a SLURM node list, in SLURM's order. Raises ``ConfigError`` on a malformed list."""
    hosts: List[str] = []
    for item in split_top_level(nodelist):
        pieces = _GROUP.split(item)  # text, range body, text, range body, ..., text
        if "[" in "".join(pieces[0::2]) or "]" in "".join(pieces[0::2]):
            raise ConfigError(f"SLURM node list {nodelist!r}: unbalanced brackets")
        choices = [[piece] if i % 2 == 0 else expand_range(piece, nodelist) for i, piece in enumerate(pieces)]
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    return hosts


def first_host(nodelist: str) -> str:
    """The first host of ``nodelist``: from ``scontrol show hostnames`` when that command exists, else parsed here."""
    if shutil.which("scontrol"):
        shown = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60)
        if shown.returncode == 0 and shown.stdout.split():
            return shown.stdout.split()[0]
    return expand_nodelist(nodelist)[0]


def master_port(environ: Mapping[str, str]) -> int:
    """``MASTER_PORT`` when set, else one derived from ``SLURM_JOB_ID`` (see the module docstring), else 29500."""
    if environ.get("MASTER_PORT"):
        return int(environ["MASTER_PORT"])
    job = environ.get("SLURM_JOB_ID", "")
    return PORT_BASE + int(job) % PORT_SPAN if job.isdigit() else DEFAULT_PORT


def master_addr(environ: Mapping[str, str]) -> Optional[str]:
    """``MASTER_ADDR`` when set, else the first host of ``SLURM_JOB_NODELIST`` (None when neither is set)."""
    if environ.get("MASTER_ADDR"):
        return environ["MASTER_ADDR"]
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    return first_host(nodelist) if nodelist else None


def rendezvous(environ: Optional[Mapping[str, str]] = None) -> str:
    """The ``tcp://HOST:PORT`` init method of a SLURM-started job. Raises ``ConfigError`` when no host is known."""
    environ = os.environ if environ is None else environ
    addr = master_addr(environ)
    if addr is None:
        raise ConfigError(
            "SLURM_NTASKS > 1 but neither MASTER_ADDR nor SLURM_JOB_NODELIST is set: start the tasks with srun"
        )
    return f"tcp://{addr}:{master_port(environ)}"
