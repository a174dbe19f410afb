"""Two CPU processes (gloo): DDP + open_clip's local loss with all-gather-with-grad equals one process on the
same global batch (loss and every gradient, with and without accumulation; also with two positive texts per image,
``mix.positives=2``), and ``train()`` runs under DDP
with one shared out_dir (rank 0 writes, every rank's RNG state is in the checkpoint)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port

import train_clip.train  # noqa: F401  (imported before forking, so the ranks start in a second, not in ten)

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
WORLD = 2
GLOBAL_BATCH = 8


def model_cfg():
    """The micro test model config."""
    from train_clip.config import ClipModelConfig

    return ClipModelConfig(name="TestCLIP-micro", inline=MICRO)


def global_batch() -> dict:
    """The global batch every comparison uses."""
    g = torch.Generator().manual_seed(7)
    return {
        "image": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g),
        "text": torch.randint(1, 49000, (GLOBAL_BATCH, 16), generator=g),
    }


def global_multi_batch() -> dict:
    """The global batch with two texts per image (``mix.positives=2``): image i's texts are rows 2 i and 2 i + 1."""
    g = torch.Generator().manual_seed(8)
    return {
        "image": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g),
        "text": torch.randint(1, 49000, (2 * GLOBAL_BATCH, 16), generator=g),
    }


def gradients_of(env, micro_batches, out_dir: str):
    """Loss (mean over ranks) and gradients of one step of the micro model on ``micro_batches``."""
    from train_clip.models import create_clip, register_inline
    from train_clip.step import StepContext, compute_gradients, make_loss
    from training.distributed import all_reduce_mean, wrap_ddp
    from training.precision import precision_context

    cfg = model_cfg()
    register_inline(cfg, out_dir)
    model = create_clip(cfg, 32, torch.device("cpu"), seed=0)
    ddp = wrap_ddp(model, env)
    autocast, scaler = precision_context("fp32", env.device)
    ctx = StepContext(ddp, make_loss(env, True, True), torch.optim.SGD(model.parameters(), lr=0.0), autocast, scaler)
    loss = all_reduce_mean(compute_gradients(ctx, micro_batches), env)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


def short_ddp_run(out_dir: str):
    """A 4-step train() run of the micro model under DDP on synthetic pairs."""
    from train_helpers import synthetic_factory

    from train_clip.config import StageConfig, TrainConfig
    from train_clip.train import train

    cfg = TrainConfig(
        stages=[StageConfig(image_size=32, samples=64, batch_size=8, lr=1e-3)],
        threads=1,
        checkpoint_every_steps=2,
        log_every=1,
        progress_bar=False,
        tensorboard=False,
        device="cpu",
    )
    return train(model_cfg(), cfg, None, None, out_dir, loader_factory=synthetic_factory(64))


def worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: gradients without and with accumulation, then a short DDP train() run."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from training.distributed import init_distributed, shutdown

    env = init_distributed("cpu")
    local = {k: v.chunk(WORLD)[rank] for k, v in global_batch().items()}
    multi = {k: v.chunk(WORLD)[rank] for k, v in global_multi_batch().items()}  # image-major: pairs stay together
    with warnings.catch_warnings(record=True) as shown:  # every warning a user would see, each time it is raised
        warnings.simplefilter("always")
        results = {
            "plain": gradients_of(env, [local], out_dir),
            "accum": gradients_of(env, [{k: v.chunk(2)[i] for k, v in local.items()} for i in range(2)], out_dir),
            "positives": gradients_of(env, [multi], out_dir),
            "positives_accum": gradients_of(
                env, [{k: v.chunk(2)[i] for k, v in multi.items()} for i in range(2)], out_dir
            ),
        }
        torch.save(results, os.path.join(out_dir, f"grads_rank{rank}.pt"))
        result = short_ddp_run(os.path.join(out_dir, "run"))
    future = [f"{w.filename}:{w.lineno}: {w.message}" for w in shown if issubclass(w.category, FutureWarning)]
    torch.save(
        {
            "steps": result.steps,
            "samples": result.samples_seen,
            "global_batch": result.global_batch,
            "future_warnings": future,
        },
        os.path.join(out_dir, f"result_rank{rank}.pt"),
    )
    shutdown(env)


@pytest.fixture(scope="module")
def ddp_outputs(tmp_path_factory):
    """Run both ranks once (forked, as DataLoader workers are; each sets one thread); returns the output folder."""
    out_dir = str(tmp_path_factory.mktemp("ddp"))
    mp.start_processes(worker, args=(free_port(), out_dir), nprocs=WORLD, join=True, start_method="fork")
    return out_dir


def test_distributed_loss_and_gradients_equal_single_process(ddp_outputs, tmp_path):
    from training.distributed import DistEnv

    expected_loss, expected = gradients_of(DistEnv(), [global_batch()], str(tmp_path))
    multi_loss, multi = gradients_of(DistEnv(), [global_multi_batch()], str(tmp_path))  # the multi-positive loss
    for rank in range(WORLD):
        results = torch.load(os.path.join(ddp_outputs, f"grads_rank{rank}.pt"), weights_only=True)
        for mode in ("plain", "accum", "positives", "positives_accum"):
            loss, grads = results[mode]
            want_loss, want = (multi_loss, multi) if mode.startswith("positives") else (expected_loss, expected)
            assert torch.allclose(loss, want_loss, atol=1e-5), (mode, loss, want_loss)
            for name, grad in want.items():
                assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-5), (rank, mode, name)


def test_train_runs_under_ddp_with_one_shared_out_dir(ddp_outputs):
    from training import checkpoint as ckpt

    results = [torch.load(os.path.join(ddp_outputs, f"result_rank{r}.pt"), weights_only=True) for r in range(WORLD)]
    assert results[0] == results[1] == {"steps": 4, "samples": 64, "global_batch": [16], "future_warnings": []}
    run_dir = os.path.join(ddp_outputs, "run")
    payload = ckpt.load_checkpoint(ckpt.list_checkpoints(run_dir)[-1])
    assert len(payload["rng"]) == WORLD and payload["world_size"] == WORLD
    assert not torch.equal(payload["rng"][0]["torch"], payload["rng"][1]["torch"])  # ranks draw different augmentations
    written = set(os.listdir(run_dir))
    assert {"checkpoints", "epochs.jsonl", "export", "metrics.jsonl", "train.log", "train_config.json"} <= written
    assert not any(name.startswith(("rank", ".hydra", "outputs")) for name in written)  # no per-rank run folders
