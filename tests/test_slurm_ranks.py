"""Many GPUs under SLURM without torchrun: SLURM's node lists expand as ``scontrol show hostnames`` does, ranks come
from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID when torchrun's variables are absent (torchrun's win when both are
set), and two ``srun``-style processes (gloo on CPU) train the micro CLIP to the same losses and weights as torchrun
with two ranks.

Run as a script (``python tests/test_slurm_ranks.py OUT``), this file is one rank of that comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import free_port

HERE = os.path.abspath(__file__)
TORCHRUN_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node1", ["node1"]),
        ("gpu[001-004,007]", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu007"]),
        ("a[1-2],b3", ["a1", "a2", "b3"]),
        ("rack1-[01-02]", ["rack1-01", "rack1-02"]),
        ("r[1-2]-n[8-10]", ["r1-n8", "r1-n9", "r1-n10", "r2-n8", "r2-n9", "r2-n10"]),
        ("x[09-11],y", ["x09", "x10", "x11", "y"]),
    ],
)
def test_nodelists_expand_like_scontrol_show_hostnames(nodelist, hosts):
    from harness_infra.slurm import expand_nodelist, first_host

    assert expand_nodelist(nodelist) == hosts
    assert first_host(nodelist) == hosts[0]


@pytest.mark.parametrize("nodelist", ["gpu[1-2", "gpu1-2]", "gpu[4-2]", "gpu[a-b]", "a,,b", "gpu[]"])
def test_a_malformed_nodelist_is_a_one_line_config_error(nodelist):
    from harness_infra.errors import ConfigError
    from harness_infra.slurm import expand_nodelist

    with pytest.raises(ConfigError, match="SLURM node list"):
        expand_nodelist(nodelist)


def test_ranks_come_from_slurm_when_torchrun_is_absent_and_torchrun_wins_when_both_are_set(monkeypatch):
    from harness_infra import ranks, slurm

    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "5")  # the second task of the second node: 2 nodes x 4 tasks
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[001-004,007]")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    assert (ranks.launcher(), ranks.rank(), ranks.world_size(), ranks.local_rank(), ranks.is_main()) == (
        "slurm",
        5,
        8,
        1,
        False,
    )
    assert slurm.rendezvous() == f"tcp://gpu001:{20000 + 123456 % 20000}"  # 23456: the job's own port
    monkeypatch.setenv("MASTER_PORT", "4242")
    assert slurm.rendezvous() == "tcp://gpu001:4242"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (ranks.launcher(), ranks.rank(), ranks.world_size(), ranks.local_rank()) == ("torchrun", 1, 2, 1)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name)
    assert (ranks.launcher(), ranks.rank(), ranks.world_size(), ranks.local_rank()) == ("none", 0, 1, 0)


@pytest.mark.parametrize("gpus, nodes", [(None, None), (4, 2)])
def test_the_shipped_slurm_launcher_runs_one_task_per_gpu(gpus, nodes):
    """hydra/launcher=slurm_gpus is submitit's SLURM launcher with tasks_per_node following gpus_per_node."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from pipeline.overrides import CONF_DIR  # importing pipeline.overrides registers the typed schemas the config names

    overrides = ["hydra/launcher=slurm_gpus"] + (
        [f"hydra.launcher.gpus_per_node={gpus}", f"hydra.launcher.nodes={nodes}"] if gpus else []
    )
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    expected = gpus or 8
    assert (cfg.hydra.launcher.gpus_per_node, cfg.hydra.launcher.tasks_per_node, cfg.hydra.launcher.nodes) == (
        expected,
        expected,
        nodes or 1,
    )


def rank_main(out_dir: str) -> None:
    """One rank (torchrun's or SLURM's): a 4-step train() of the micro CLIP; rank 0 writes the run, every rank its place."""
    import torch

    torch.set_num_threads(1)
    from test_train_clip_distributed import short_ddp_run

    from harness_infra import ranks

    place = {
        "launcher": ranks.launcher(),
        "rank": ranks.rank(),
        "world": ranks.world_size(),
        "local": ranks.local_rank(),
    }
    result = short_ddp_run(os.path.join(out_dir, "run"))
    place["global_batch"] = result.global_batch
    with open(os.path.join(out_dir, f"place{ranks.rank()}.json"), "w") as f:
        json.dump(place, f)


def run_outputs(out_dir: str):
    """The per-step losses and the last checkpoint's weights of one run."""

    from training import checkpoint as ckpt

    losses = [
        json.loads(line)["loss"] for line in open(os.path.join(out_dir, "run", "metrics.jsonl")) if '"loss"' in line
    ]
    payload = ckpt.load_checkpoint(ckpt.list_checkpoints(os.path.join(out_dir, "run"))[-1])
    places = [json.load(open(os.path.join(out_dir, f"place{r}.json"))) for r in range(2)]
    return losses, payload["model"], places


@pytest.mark.slow  # about 25 s on 2 cores: two 2-rank runs
def test_srun_tasks_train_like_torchrun_ranks(tmp_path):
    import torch

    clean = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS and not k.startswith("SLURM_")}
    clean["OMP_NUM_THREADS"] = "1"
    torchrun_dir, slurm_dir = str(tmp_path / "torchrun"), str(tmp_path / "slurm")
    os.makedirs(slurm_dir)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            HERE,
            torchrun_dir,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    port = str(free_port())
    tasks = [
        subprocess.Popen(
            [sys.executable, HERE, slurm_dir],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **clean,
                "SLURM_PROCID": str(r),
                "SLURM_NTASKS": "2",
                "SLURM_LOCALID": "0",  # one task on each of two "nodes"
                "SLURM_JOB_NODELIST": "127.0.0.1,localhost",
                "SLURM_JOB_ID": "7",
                "MASTER_PORT": port,
            },
        )
        for r in range(2)
    ]
    for task in tasks:
        _, err = task.communicate(timeout=600)
        assert task.returncode == 0, err[-3000:]
    ref_losses, ref_weights, ref_places = run_outputs(torchrun_dir)
    losses, weights, places = run_outputs(slurm_dir)
    assert [(p["launcher"], p["rank"], p["world"], p["local"]) for p in ref_places] == [
        ("torchrun", r, 2, r) for r in range(2)
    ]
    assert [(p["launcher"], p["rank"], p["world"], p["local"]) for p in places] == [
        ("slurm", r, 2, 0) for r in range(2)
    ]
    assert all(
        p["global_batch"] == [16] for p in places + ref_places
    )  # 8 per rank x 2 ranks: both ranks trained together
    assert len(losses) == len(ref_losses) == 4 and losses == pytest.approx(ref_losses, rel=1e-6, abs=1e-7)
    assert ref_weights.keys() == weights.keys()
    for name, value in ref_weights.items():
        assert torch.allclose(weights[name], value, rtol=1e-6, atol=1e-7), name


if __name__ == "__main__":
    rank_main(sys.argv[1])
