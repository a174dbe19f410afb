"""Train a text-conditioned DiT on mixed captions; the public entry point is ``train()``.

Reads top to bottom (DiT's ``train.py`` style): ranks and runtime -> frozen text encoder and image space -> the
transformer, its EMA (diffusers ``EMAModel``), AdamW and the constant lr -> resume (weights, EMA, optimizer, RNG,
data position) -> batches (cached features through the caption mixer, or encoded per batch) -> steps: caption
dropout to the null condition, noise, loss, a non-finite check, AdamW, EMA -> held-out x0 errors of the EMA weights
(``train.val_every_steps``) -> atomic checkpoints -> export.

Every random draw for a sample in a step (flip view, caption dropout, timestep, noise) comes from a generator seeded
by (seed, step, sample key): a resumed run repeats the uninterrupted one bit for bit on CPU, and N ranks draw what
one process would for the same samples (DDP equals one process up to float summation order).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel

from captiondata.config import DataConfig, MixConfig
from captiondata.loader import CaptionLoader, derived_seed
from harness_infra.atomic import atomic_write_json
from harness_infra.errors import require
from train_dit.config import DitModelConfig, DitTrainConfig
from train_dit.diffusion import noisy_inputs, training_output, training_scheduler
from train_dit.features import FeatureBatches, ensure_features, pixel_transform
from train_dit.image import ImageSpace, to_model_range
from train_dit.model import build_transformer, parameter_count, predict
from train_dit.text import TextEncoder, null_condition, pad_features, unpad_features
from train_dit.validation import HeldOut, denoising_errors, held_out
from training import checkpoint as ckpt
from training.distributed import DistEnv, barrier, gather_objects, unwrap, wrap_ddp
from training.guard import check_finite_loss
from training.monitor import RunMonitor
from training.precision import precision_context
from training.process import TrainingProcess, training_process
from training.runtime import seed_everything
from training.schedule import LRSchedule
from training.stream import BatchSource, DataStream

log = logging.getLogger(__name__)
EXPORT_DIR = "export"
PIPELINE_FILE = "dit_pipeline.json"
LOGGERS = ("train_dit", "training", "captiondata")  # copied to out_dir/train.log
SourceFactory = Callable[["Session"], BatchSource]


@dataclass
class DitTrainResult:
    """What a finished run produced and how fast."""

    out_dir: str
    checkpoint_path: str
    export_dir: str
    model_name: str
    steps: int
    samples_seen: int
    global_batch: List[int]
    parameters: int
    wall_time_s: float
    train_time_s: float
    samples_per_s: float
    final_loss: Optional[float]
    resumed_from: Optional[str] = None
    validation: Optional[Dict[str, float]] = None
    resumed: List[Dict[str, Any]] = field(default_factory=list)  # training.checkpoint.resumes: [{"from_step", "at"}]
    torn_jsonl_lines: Dict[str, int] = field(default_factory=dict)  # torn last lines dropped on resume, by file


@dataclass(frozen=True)
class Session:
    """What stays fixed for the whole run: the configs, the absolute run folder, this process's ranks, the model
    card's command (None: this process's) and, once ``run`` has built them, the frozen text encoder
    (``train_dit.text.TextEncoder``), the image space (``train_dit.image.ImageSpace``) and the null condition
    (features [L, D] and mask [L] of the empty caption). What changes as the run goes (position, last loss, latest
    checkpoint, validation errors) lives in ``run``'s locals and goes through arguments and return values."""

    model_cfg: DitModelConfig
    train_cfg: DitTrainConfig
    data_cfg: Optional[DataConfig]
    mix_cfg: Optional[MixConfig]
    out_dir: str
    env: DistEnv
    text: Any = None
    space: Any = None
    null: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    command: Optional[str] = None


class LoopEnd(NamedTuple):
    """Where ``train_steps`` left the run."""

    position: ckpt.Position
    last_loss: Optional[float]  # the last logged training loss
    checkpoint_path: str  # the newest checkpoint ("" when none yet)
    validation: Optional[Dict[str, float]]  # the newest held-out errors (None when not validated)


def train(
    model_cfg: DitModelConfig,
    train_cfg: DitTrainConfig,
    data_cfg: Optional[DataConfig],
    mix_cfg: Optional[MixConfig],
    out_dir: str,
    source_factory: Optional[SourceFactory] = None,
    command: Optional[str] = None,
) -> DitTrainResult:
    """Train the DiT on caption shards (``data_cfg``, ``mix_cfg``) into ``out_dir`` (identical on every rank).

    ``source_factory(session)`` replaces the caption loader (tests: in-memory batches of ``{"image" [B, 3, H, W] in
    [0, 1], "text": [str]}``). ``command``: the command line the model card records (default: this process's).
    Resuming (``train.resume``) restores weights, EMA, optimizer, RNG and data position.
    Raises ``harness_infra.errors.BrokenModelError`` (``training.guard.check_finite_loss``) naming the step and the last
    good checkpoint when a loss is not finite on any rank.
    """
    started = time.perf_counter()
    out_dir = os.path.abspath(out_dir)
    cfg = train_cfg
    with training_process(out_dir, cfg.threads, cfg.deterministic, cfg.device, cfg.dist_backend, LOGGERS) as process:
        session = Session(model_cfg, train_cfg, data_cfg, mix_cfg, out_dir, process.env, command=command)
        return run(session, process, source_factory, started)


def run(
    session: Session, process: TrainingProcess, source_factory: Optional[SourceFactory], started: float
) -> DitTrainResult:
    """Set up (text encoder, image space and null condition into ``session``), resume or start, train every step,
    export; the run monitor is closed with ``process``."""
    cfg, env, model_cfg = session.train_cfg, session.env, session.model_cfg
    text = TextEncoder(model_cfg.text_encoder, env.device)
    space = ImageSpace(model_cfg.image_space, env.device, seed=cfg.seed)
    space.check(model_cfg)
    session = replace(session, text=text, space=space, null=null_condition(text))
    latent = session.space.latent_size(model_cfg.image_size)
    model = build_transformer(model_cfg, session.space.channels, latent, session.text.dim, seed=cfg.seed).to(env.device)
    ema = EMAModel(
        model.parameters(),
        decay=cfg.ema_decay,
        use_ema_warmup=cfg.ema_warmup,
        inv_gamma=cfg.ema_inv_gamma,
        power=cfg.ema_power,
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    steps = cfg.num_steps(env.world_size)
    schedule = LRSchedule(optimizer, cfg.lr, cfg.warmup_steps, steps, "const")
    resume_path = ckpt.resolve_resume(cfg.resume, session.out_dir)
    last_loss: Optional[float] = None
    resumed: List[Dict[str, Any]] = []
    if resume_path:
        position, last_loss, resumed = resume(session, resume_path, model, ema, optimizer, schedule)
    else:
        position = ckpt.Position()
        seed_everything(cfg.seed + env.rank)
    write_run_config(session, latent)
    held: Optional[HeldOut] = None
    if cfg.val_every_steps:  # every rank reads it, so a bad val split stops them all; rank 0 validates
        split = held_out(session.data_cfg, model_cfg.image_size, session.space, session.text, cfg.val_samples)
        held = split if env.is_main else None
    log.info(
        "DiT %s: %d parameters, %dx%dx%d inputs, patch %d -> %d tokens x %d, text %s (%d dims), %d steps of global batch %d",
        model_cfg.name,
        parameter_count(model),
        session.space.channels,
        latent,
        latent,
        model_cfg.resolved_patch,
        (latent // model_cfg.resolved_patch) ** 2,
        model_cfg.resolved_width,
        model_cfg.text_encoder.name,
        session.text.dim,
        steps,
        cfg.global_batch(env.world_size),
    )
    source = source_factory(session) if source_factory is not None else caption_source(session)
    monitor = process.closing(
        RunMonitor(
            session.out_dir,
            env,
            steps,
            position.step,
            position.samples_seen,
            cfg.log_every,
            tensorboard=cfg.tensorboard,
            progress_bar=cfg.progress_bar,
            wandb_project=cfg.wandb_project,
            run_config=asdict(cfg),
        )
    )
    train_model = wrap_ddp(model, env)
    if model_cfg.torch_compile:
        train_model = torch.compile(train_model)
    loop_started, first_samples = time.perf_counter(), position.samples_seen
    position, last_loss, checkpoint_path, validation = train_steps(
        session,
        train_model,
        model,
        ema,
        optimizer,
        schedule,
        source,
        monitor,
        held,
        position,
        steps,
        last_loss,
        resumed,
        resume_path or "",
    )
    train_time = time.perf_counter() - loop_started
    checkpoint_path = save(session, model, ema, optimizer, schedule, position, last_loss, resumed, checkpoint_path)
    export_dir = export(session, model, ema, latent, position, last_loss, validation)
    return DitTrainResult(
        out_dir=session.out_dir,
        checkpoint_path=checkpoint_path,
        export_dir=export_dir,
        model_name=model_cfg.name,
        steps=position.step,
        samples_seen=position.samples_seen,
        global_batch=[cfg.global_batch(env.world_size)],
        parameters=parameter_count(model),
        wall_time_s=time.perf_counter() - started,
        train_time_s=train_time,
        samples_per_s=(position.samples_seen - first_samples) / max(train_time, 1e-9),
        final_loss=last_loss,
        resumed_from=resume_path,
        validation=validation,
        resumed=resumed,
        torn_jsonl_lines=dict(monitor.torn_lines),
    )


def resume(
    session: Session,
    path: str,
    model: torch.nn.Module,
    ema: EMAModel,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
) -> Tuple[ckpt.Position, Optional[float], List[Dict[str, Any]]]:
    """Restore weights, EMA, optimizer, schedule and RNG from a checkpoint (loaded with weights_only=True); returns
    its (position, last logged loss, resumes so far: ``training.checkpoint.resumes``)."""
    env = session.env
    payload = ckpt.load_checkpoint(path)
    require(
        payload.get("model_name") == session.model_cfg.name,
        f"train.resume: {path} holds model {payload.get('model_name')!r}, not model.name={session.model_cfg.name!r}",
    )
    model.load_state_dict(payload["model"], strict=True)
    ema.load_state_dict(payload["ema"])
    ema.to(device=env.device)
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["scheduler"])
    states = payload["rng"]
    if len(states) == env.world_size:
        ckpt.restore_rng(states[env.rank])
    else:
        log.warning(
            "resuming a %d-rank checkpoint on %d ranks: the data position is approximate and not bitwise",
            len(states),
            env.world_size,
        )
    position = ckpt.Position(**payload["position"])
    log.info(
        "resuming from %s at step %d (epoch %d, batch %d)", path, position.step, position.epoch, position.batch_in_epoch
    )
    return position, payload.get("last_loss"), ckpt.resumes(payload)


def write_run_config(session: Session, latent: int) -> None:
    """Record the resolved configs, world size and global batch in out_dir/train_config.json (rank 0)."""
    if not session.env.is_main:
        return
    record = {
        "model": asdict(session.model_cfg),
        "train": asdict(session.train_cfg),
        "data": asdict(session.data_cfg) if is_dataclass(session.data_cfg) else None,
        "mix": asdict(session.mix_cfg) if is_dataclass(session.mix_cfg) else None,
        "world_size": session.env.world_size,
        "global_batch": session.train_cfg.global_batch(session.env.world_size),
        "latent": [session.space.channels, latent, latent],
        "note": "global batch = batch_size x world_size; p = probability of the ORIGINAL caption",
    }
    atomic_write_json(os.path.join(session.out_dir, "train_config.json"), json.loads(json.dumps(record, default=str)))


def caption_source(session: Session) -> BatchSource:
    """The training batches: cached features (``train.features``) or images and captions encoded per batch; either
    way through ``CaptionLoader``, whose mixer draws each sample's caption from (mix seed, key, epoch)."""
    cfg, env, model_cfg = session.train_cfg, session.env, session.model_cfg
    require(
        session.data_cfg is not None and session.mix_cfg is not None,
        "DiT training reads caption shards: give data and mix configs",
    )
    if not cfg.features:
        return CaptionLoader(
            session.data_cfg,
            session.mix_cfg,
            split="train",
            image_transform=pixel_transform(model_cfg.image_size),
            tokenize=None,
            batch_size=cfg.batch_size,
            rank=env.rank,
            world_size=env.world_size,
            seed=cfg.seed,
        )
    store = ensure_features(
        session.data_cfg,
        session.mix_cfg,
        session.text,
        session.space,
        model_cfg.image_size,
        cfg.flip,
        cfg.feature_cache_dir,
        cfg.feature_batch_size,
        env.rank,
        env.world_size,
        lambda: barrier(env),
    )
    loader = CaptionLoader(
        session.data_cfg,
        session.mix_cfg,
        split="train",
        tokenize=None,
        batch_size=cfg.batch_size,
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.seed,
        image_features=store.images,
    )
    return FeatureBatches(loader, store)


def sample_generators(seed: int, step: int, keys: List[str]) -> List[torch.Generator]:
    """One CPU generator per sample of a step, seeded by (seed, step, key)."""
    return [torch.Generator().manual_seed(derived_seed(seed, step, key, "dit-sample")) for key in keys]


def prepare_batch(
    session: Session, batch: Dict[str, Any], generators: List[torch.Generator]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0 [B, C, S, S], text [B, L, D], mask [B, L]) on the device: a flip view per sample (p = 0.5 when
    ``train.flip``), the drawn caption's features, each replaced by the null condition with p = ``caption_dropout``;
    sample i's draws from ``generators[i]``."""
    cfg, device = session.train_cfg, session.env.device
    coins = torch.stack([torch.rand(3, generator=g) for g in generators])  # [B, (flip, dropout, posterior seed)]
    flipped = (coins[:, 0] < 0.5) & cfg.flip
    if "x0" in batch:
        views = batch["x0"]
        pick = (flipped & (views.shape[1] > 1)).long()
        x0 = views[torch.arange(views.shape[0]), pick].to(device, torch.float32)
        rows = list(batch["text_rows"])
    else:
        pixels = to_model_range(batch["image"].float())
        pixels = torch.where(flipped.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
        posterior = torch.Generator().manual_seed(int(coins[0, 2] * 2**31)) if len(coins) else None
        x0 = session.space.encode(pixels, generator=posterior, sample=session.model_cfg.image_space.sample_posterior)
        rows = unpad_features(*session.text.encode(list(batch["text"])))
    dropped = coins[:, 1] < cfg.caption_dropout
    rows = [session.null[0] if drop else row for row, drop in zip(rows, dropped.tolist())]
    text, mask = pad_features(rows)
    return x0, text.to(device), mask.to(device)


def train_steps(
    session: Session,
    train_model: torch.nn.Module,
    model: torch.nn.Module,
    ema: EMAModel,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    source: BatchSource,
    monitor: RunMonitor,
    held: Optional[HeldOut],
    position: ckpt.Position,
    steps: int,
    last_loss: Optional[float],
    resumed: List[Dict[str, Any]],
    checkpoint_path: str,
) -> LoopEnd:
    """Run optimizer steps from ``position`` to ``steps``: the EMA's held-out errors on ``held`` (rank 0's, else
    None) every ``val_every_steps`` and at the end, checkpoints every ``checkpoint_every_steps`` (``last_loss``,
    ``resumed``: what a checkpoint records; ``checkpoint_path``: the newest one so far, "" when none)."""
    cfg, env = session.train_cfg, session.env
    validation: Optional[Dict[str, float]] = None
    scheduler = training_scheduler(cfg)
    autocast, _ = precision_context(cfg.precision, env.device)
    global_batch = cfg.global_batch(env.world_size)
    batch_text = f"{global_batch} (= {cfg.batch_size} x {env.world_size} ranks)"
    stream = DataStream(
        source,
        env,
        position.epoch,
        position.batch_in_epoch,
        lambda epoch, stats: monitor.epoch_end(epoch, stats, batch_text, 0),
    )
    model.train()
    while position.step < steps:
        lr = schedule.set_step(position.step)
        batch = stream.next_batch()
        generators = sample_generators(cfg.seed, position.step, list(batch["key"]))
        x0, text, mask = prepare_batch(session, batch, generators)
        x_t, timesteps, target = noisy_inputs(scheduler, cfg, x0, generators)
        with autocast():
            prediction = predict(train_model, x_t, timesteps, text, mask)
        loss = F.mse_loss(training_output(cfg, prediction, x_t, timesteps).float(), target.float())
        check_finite_loss(loss, env, position.step + 1, checkpoint_path)  # before backward and the update
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
        optimizer.step()
        ema.step(model.parameters())
        position.step, position.stage_step = position.step + 1, position.step + 1
        position.samples_seen += global_batch
        position.epoch, position.batch_in_epoch = stream.epoch, stream.batch_in_epoch
        record = monitor.step_done(
            position.step,
            position.samples_seen,
            loss.detach(),
            lr,
            {"ema_decay": ema.cur_decay_value or 0.0},
            {"epoch": position.epoch, "global_batch": global_batch},
            force=position.step == steps,
        )
        if record is not None:
            last_loss = record["loss"]
        if held is not None and (position.step % cfg.val_every_steps == 0 or position.step == steps):
            validation = validate(session, model, ema, scheduler, held, monitor, position)
        if cfg.checkpoint_every_steps and position.step % cfg.checkpoint_every_steps == 0 and position.step < steps:
            checkpoint_path = save(
                session, model, ema, optimizer, schedule, position, last_loss, resumed, checkpoint_path
            )
    stream.epoch_end_partial()
    position.epoch, position.batch_in_epoch = stream.epoch, stream.batch_in_epoch
    return LoopEnd(position, last_loss, checkpoint_path, validation)


def validate(
    session: Session,
    model: torch.nn.Module,
    ema: EMAModel,
    scheduler: Any,
    held: HeldOut,
    monitor: RunMonitor,
    position: ckpt.Position,
) -> Dict[str, float]:
    """The EMA weights' held-out x0 errors (``train_dit.validation``) on ``held`` at ``position`` (rank 0), recorded
    by ``monitor``: the trained weights are stored, replaced by the EMA's for the forward passes and restored."""
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        validation = denoising_errors(model, held, session.train_cfg, scheduler)
    finally:
        ema.restore(model.parameters())
    monitor.validation(position.step, position.samples_seen, validation)
    return validation


def save(
    session: Session,
    model: torch.nn.Module,
    ema: EMAModel,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    position: ckpt.Position,
    last_loss: Optional[float],
    resumed: List[Dict[str, Any]],
    latest: str,
) -> str:
    """Write the checkpoint of ``position`` atomically (rank 0; every rank contributes its RNG state): weights, EMA,
    optimizer, schedule, position, RNG, ``last_loss`` and ``resumed``; keep the newest ``keep_checkpoints``. Nothing
    is written when ``latest`` (the newest checkpoint so far) already is this step's. Returns this step's path."""
    env = session.env
    path = ckpt.checkpoint_path(session.out_dir, position.step)
    rng_states = gather_objects(ckpt.capture_rng(), env)
    if env.is_main and path != latest:
        ema_state = ema.state_dict()
        payload = {
            "family": "dit",
            "model": {k: v.detach().to("cpu") for k, v in unwrap(model).state_dict().items()},
            "ema": {**ema_state, "shadow_params": [p.detach().to("cpu") for p in ema_state["shadow_params"]]},
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "position": position.as_dict(),
            "rng": rng_states,
            "world_size": env.world_size,
            "model_name": session.model_cfg.name,
            "last_loss": last_loss,
            "resumed": resumed,
        }
        ckpt.write_checkpoint(payload, session.out_dir, position, session.train_cfg.keep_checkpoints)
    barrier(env)
    return path


def pipeline_description(session: Session, latent: int) -> Dict[str, Any]:
    """``dit_pipeline.json``: what the harness's loader needs beside the transformer and training scheduler to sample
    (text encoder and image space references, image size, prediction type, default sampling settings)."""
    model_cfg, cfg = session.model_cfg, session.train_cfg
    text = asdict(model_cfg.text_encoder)
    if text["kind"] == "clip_export":
        text["name"] = os.path.abspath(text["name"])
    space = asdict(model_cfg.image_space)
    if space["kind"] != "pixels":
        space = {
            **space,
            "config": None,
            "path": "vae",
            "subfolder": None,
            "note": "the run's autoencoder, saved in vae/",
        }
    return {
        "format": 2,
        "family": "dit",
        "model_name": model_cfg.name,
        "text_encoder": text,
        "image_space": space,
        "scaling_factor": session.space.scaling_factor,
        "image_size": model_cfg.image_size,
        "latent": [session.space.channels, latent, latent],
        "prediction": cfg.resolved_prediction,
        "scheduler": cfg.scheduler,
        "null_condition": "the text encoder's features of the empty caption",
        "weights": "EMA",
        "sample_defaults": asdict(cfg.sample),
    }


def card_facts(
    session: Session, position: ckpt.Position, last_loss: Optional[float], validation: Optional[Dict[str, float]]
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(budget, metrics) of the model card: samples, steps, global batch, ranks; final loss and held-out errors."""
    cfg, env = session.train_cfg, session.env
    budget = {
        "samples seen": position.samples_seen,
        "steps": position.step,
        "global batch": cfg.global_batch(env.world_size),
        "ranks": env.world_size,
        "train.samples": cfg.samples,
    }
    metrics = {"final training loss": last_loss} if last_loss is not None else {}
    metrics.update({f"held-out {name}": value for name, value in (validation or {}).items()})
    return budget, metrics


def export(
    session: Session,
    model: torch.nn.Module,
    ema: EMAModel,
    latent: int,
    position: ckpt.Position,
    last_loss: Optional[float],
    validation: Optional[Dict[str, float]],
) -> str:
    """Write ``out_dir/export`` (rank 0), a diffusers pipeline (``train_dit.hub``: ``model_index.json``,
    ``pipeline.py``, ``transformer/`` = EMA weights, ``scheduler/`` = the sampling scheduler, ``vae/`` in latent
    space, ``text_encoder/`` + ``tokenizer/`` for a Hugging Face text encoder, ``README.md`` model card) plus
    ``transformer_online/`` (the trained weights), ``train_scheduler/`` and ``dit_pipeline.json``; written in a
    temporary folder and renamed into place; the model card records ``last_loss`` and the held-out ``validation``."""
    from train_dit.hub import LOAD_LINE, model_card, process_command, save_diffusers_pipeline, write_model_card

    export_dir = os.path.join(session.out_dir, EXPORT_DIR)
    if session.env.is_main:
        staging = tempfile.mkdtemp(prefix=".export-", dir=session.out_dir)
        try:
            bare = unwrap(model)
            bare.save_pretrained(os.path.join(staging, "transformer_online"))
            averaged = type(bare).from_config(bare.config)
            ema.copy_to(averaged.parameters())
            sampler = save_diffusers_pipeline(
                staging,
                averaged,
                training_scheduler(session.train_cfg),
                session.train_cfg,
                session.space.vae,
                session.text,
                session.space.scaling_factor,
            )
            atomic_write_json(os.path.join(staging, PIPELINE_FILE), pipeline_description(session, latent))
            budget, metrics = card_facts(session, position, last_loss, validation)
            write_model_card(
                staging,
                model_card(
                    session.model_cfg,
                    session.train_cfg,
                    session.data_cfg,
                    session.mix_cfg,
                    sampler,
                    budget,
                    metrics,
                    session.command or process_command(),
                ),
            )
            if os.path.isdir(export_dir):
                shutil.rmtree(export_dir)
            os.replace(staging, export_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info(
            "exported %s (diffusers: %s; train_dit.sample.DitPipeline.from_pretrained(%r))",
            export_dir,
            LOAD_LINE.replace("EXPORT", repr(export_dir)),
            export_dir,
        )
    barrier(session.env)
    return export_dir
