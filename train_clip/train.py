"""Train a CLIP model through the configured stages; the public entry point is ``train()``.

Reads top to bottom: set up the runtime and ranks -> resume position -> model at the first stage's image
size -> for each stage: optimizer, schedule, loader, steps, checkpoints -> switch image size for the next
stage (open_clip resamples the ViT positional embeddings) -> export an open_clip-loadable checkpoint.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from open_clip.model import get_input_dtype

from captiondata.config import DataConfig, MixConfig
from harness_infra.atomic import atomic_write_text
from harness_infra.errors import require
from towers.text_trim import TrimmedTextCLIP, text_pad_id, trim_pad_id, trim_padding
from train_clip.config import ClipModelConfig, StageConfig, TrainConfig
from train_clip.data import DataStream, LoaderFactory, LoaderRequest, caption_loader_factory
from train_clip.frozen_features import FeatureInputCLIP, train_split_features
from train_clip.models import (
    EXPORT_WEIGHTS,
    create_clip,
    create_tokenizer,
    eval_transform,
    export_model,
    register_inline,
    resize_for_stage,
    train_transform,
)
from train_clip.optim import build_optimizer
from train_clip.step import StepContext, make_loss, train_step
from training import checkpoint as ckpt
from training.distributed import DistEnv, barrier, gather_objects, unwrap, wrap_ddp
from training.guard import check_finite_loss, check_finite_weights
from training.monitor import RunMonitor
from training.precision import precision_context
from training.process import TrainingProcess, training_process
from training.runtime import seed_everything
from training.schedule import LRSchedule

log = logging.getLogger(__name__)
EXPORT_DIR = "export"
LOGGERS = ("train_clip", "training", "captiondata")  # copied to out_dir/train.log


@dataclass
class TrainResult:
    """What a finished run produced and how fast."""

    out_dir: str
    checkpoint_path: str
    export_dir: str
    export_path: str
    model_name: str
    steps: int
    samples_seen: int
    global_batch: List[int]
    wall_time_s: float
    samples_per_s: float
    train_time_s: float
    final_loss: Optional[float]
    resumed_from: Optional[str] = None
    resumed: List[Dict[str, Any]] = field(default_factory=list)  # training.checkpoint.resumes: [{"from_step", "at"}]
    torn_jsonl_lines: Dict[str, int] = field(default_factory=dict)  # torn last lines dropped on resume, by file


@dataclass(frozen=True)
class Session:
    """What stays fixed for the whole run, shared by every stage: the configs, the absolute run folder, this process's
    ranks, the loader factory and, once ``run`` has built them, the tokenizer, the locked trunk's image features
    (``train.frozen_image_features``, else None) and the text padding id to trim (``train.trim_text_padding``, else
    None). What changes as the run goes (position, last loss, latest checkpoint, training time) lives in ``run``'s
    locals and goes through arguments and return values."""

    model_cfg: ClipModelConfig
    train_cfg: TrainConfig
    out_dir: str
    env: DistEnv
    loader_factory: LoaderFactory
    tokenizer: Any = None
    image_features: Any = None
    pad_id: Optional[int] = None


class StageEnd(NamedTuple):
    """Where ``run_recipe_stage`` left the run."""

    position: ckpt.Position
    last_loss: Optional[float]  # the last logged training loss
    checkpoint_path: str  # the newest checkpoint (this stage's last step's)
    train_time_s: float  # seconds in this stage's step loop
    trained_samples: int  # samples this stage trained on (this process's run, not counting earlier runs)


def train(
    model_cfg: ClipModelConfig,
    train_cfg: TrainConfig,
    data_cfg: Optional[DataConfig],
    mix_cfg: Optional[MixConfig],
    out_dir: str,
    loader_factory: Optional[LoaderFactory] = None,
) -> TrainResult:
    """Train CLIP on caption shards (data_cfg, mix_cfg) into ``out_dir``, shared by all ranks; returns a TrainResult.

    ``out_dir`` is fixed by the caller and identical on every rank (never derived per rank). ``loader_factory``
    replaces the CaptionLoader (tests and benchmarks pass in-memory sources; data_cfg/mix_cfg may then be None).
    Resuming (``train.resume``) continues from the saved step, data position and RNG states.
    """
    started = time.perf_counter()
    out_dir = os.path.abspath(out_dir)
    factory = loader_factory or caption_loader_factory(data_cfg, mix_cfg)
    cfg = train_cfg
    with training_process(out_dir, cfg.threads, cfg.deterministic, cfg.device, cfg.dist_backend, LOGGERS) as process:
        session = Session(model_cfg, train_cfg, out_dir, process.env, factory)
        return run(session, process, data_cfg, mix_cfg, started)


def check_tower_sizes(model_cfg: ClipModelConfig, train_cfg: TrainConfig) -> None:
    """Pretrained towers train at their own image size: refuse, before any step, a stage with another one."""
    if model_cfg.tower is None:
        return
    for index, stage in enumerate(train_cfg.stages):
        require(
            stage.image_size == model_cfg.tower.image_size,
            f"train.stages[{index}].image_size={stage.image_size} but model.tower.image_size={model_cfg.tower.image_size}; "
            "pretrained towers train at one image size",
        )


def check_batches(train_cfg: TrainConfig, world_size: int) -> List[int]:
    """Effective global batch of each stage; refuses a stage whose global_batch_size disagrees."""
    batches = []
    for index, stage in enumerate(train_cfg.stages):
        batch = stage.global_batch(world_size, train_cfg.accum_steps)
        require(
            stage.global_batch_size is None or stage.global_batch_size == batch,
            f"train.stages[{index}].global_batch_size={stage.global_batch_size} but batch_size x world_size x accum_steps = "
            f"{stage.batch_size} x {world_size} x {train_cfg.accum_steps} = {batch}",
        )
        batches.append(batch)
    return batches


def write_run_config(
    session: Session, data_cfg: Optional[DataConfig], mix_cfg: Optional[MixConfig], global_batches: List[int]
) -> None:
    """Record the resolved configs and effective global batches in out_dir/train_config.json (rank 0)."""
    if not session.env.is_main:
        return
    record = {
        "model": asdict(session.model_cfg),
        "train": asdict(session.train_cfg),
        "data": asdict(data_cfg) if is_dataclass(data_cfg) else None,
        "mix": asdict(mix_cfg) if is_dataclass(mix_cfg) else None,
        "world_size": session.env.world_size,
        "global_batch": global_batches,
        "note": "global batch = batch_size x world_size x accum_steps; p = probability of the ORIGINAL caption",
    }
    atomic_write_text(
        os.path.join(session.out_dir, "train_config.json"), json.dumps(record, indent=2, default=str) + "\n"
    )


def run(
    session: Session,
    process: TrainingProcess,
    data_cfg: Optional[DataConfig],
    mix_cfg: Optional[MixConfig],
    started: float,
) -> TrainResult:
    """Resume or start, set up (tokenizer, image features and pad id into ``session``), run every stage, export; the
    run monitor is closed with ``process``."""
    cfg, env = session.train_cfg, session.env
    global_batches = check_batches(cfg, env.world_size)
    check_tower_sizes(session.model_cfg, cfg)
    register_inline(session.model_cfg, session.out_dir)
    resume_path = ckpt.resolve_resume(cfg.resume, session.out_dir)
    payload = ckpt.load_checkpoint(resume_path) if resume_path else None
    position = ckpt.Position(**payload["position"]) if payload else ckpt.Position()
    last_loss: Optional[float] = None
    if payload:
        check_resumable(payload, session, resume_path)
        last_loss = payload.get("last_loss")
    resumed = ckpt.resumes(payload)
    write_run_config(session, data_cfg, mix_cfg, global_batches)
    seed_everything(cfg.seed + env.rank)
    model = create_clip(session.model_cfg, cfg.stages[position.stage].image_size, env.device, seed=cfg.seed)
    if payload:
        model.load_state_dict(payload["model"], strict=True)
    check_positives(model, mix_cfg)
    tokenizer = create_tokenizer(session.model_cfg)
    pad_id = trim_pad_id(model) if cfg.trim_text_padding else None
    features = frozen_image_features(session, model, data_cfg) if cfg.frozen_image_features else None
    session = replace(session, tokenizer=tokenizer, pad_id=pad_id, image_features=features)
    total_steps = sum(s.num_steps(env.world_size, cfg.accum_steps) for s in cfg.stages)
    monitor = process.closing(
        RunMonitor(
            session.out_dir,
            env,
            total_steps,
            position.step,
            position.samples_seen,
            cfg.log_every,
            tensorboard=cfg.tensorboard,
            progress_bar=cfg.progress_bar,
            wandb_project=cfg.wandb_project,
            run_config=asdict(cfg),
        )
    )
    checkpoint_path = resume_path or ""
    train_time_s, trained_samples = 0.0, 0
    for index in range(position.stage, len(cfg.stages)):
        if index > position.stage:
            if cfg.stages[index].image_size != cfg.stages[index - 1].image_size:
                model = resize_for_stage(model, session.model_cfg, cfg.stages[index].image_size, env.device)
            position = ckpt.Position(
                stage=index, step=position.step, samples_seen=position.samples_seen, epoch=position.epoch
            )
        position, last_loss, checkpoint_path, stage_time_s, stage_samples = run_recipe_stage(
            session, model, index, position, payload, monitor, last_loss, resumed, checkpoint_path
        )
        train_time_s += stage_time_s
        trained_samples += stage_samples
        payload = None
    export_dir, export_path = finish(session, model, position, global_batches, card_facts(data_cfg, mix_cfg))
    return TrainResult(
        out_dir=session.out_dir,
        checkpoint_path=checkpoint_path,
        export_dir=export_dir,
        export_path=export_path,
        model_name=session.model_cfg.name,
        steps=position.step,
        samples_seen=position.samples_seen,
        global_batch=global_batches,
        wall_time_s=time.perf_counter() - started,
        train_time_s=train_time_s,
        samples_per_s=trained_samples / max(train_time_s, 1e-9),
        final_loss=last_loss,
        resumed_from=resume_path,
        resumed=resumed,
        torn_jsonl_lines=dict(monitor.torn_lines),
    )


def check_positives(model: torch.nn.Module, mix_cfg: Optional[MixConfig]) -> None:
    """Refuse several positive texts per image (``mix.positives``) for a CoCa: its captioning loss pairs one text with
    each image."""
    positives = mix_cfg.positives if mix_cfg is not None else 1
    require(
        positives == 1 or not hasattr(model, "text_decoder"),
        f"mix.positives={positives}: a CoCa's captioning loss pairs one text with each image; use mix.positives=1",
    )


def frozen_image_features(session: Session, model: torch.nn.Module, data_cfg: Optional[DataConfig]) -> Any:
    """Features of the locked image trunk over the training split (with a cache, every rank computes its share)."""
    cfg, env = session.train_cfg, session.env
    require(
        session.model_cfg.tower is not None,
        "train.frozen_image_features=true needs pretrained towers (model.tower) with a locked image tower",
    )
    require(data_cfg is not None, "train.frozen_image_features=true reads the training shards: give a data config")
    return train_split_features(
        model,
        data_cfg,
        eval_transform(model),
        cfg.feature_cache_dir,
        cfg.stages[0].batch_size,
        env.device,
        env.rank,
        env.world_size,
        lambda: barrier(env),
    )


def check_resumable(payload: Dict[str, Any], session: Session, path: str) -> None:
    """Refuse a checkpoint of another model or stage list; warn when the world size changed."""
    position, stages = payload["position"], session.train_cfg.stages
    require(
        payload.get("model_name") == session.model_cfg.name,
        f"train.resume: {path} holds model {payload.get('model_name')!r}, not model.name={session.model_cfg.name!r}",
    )
    require(
        position["stage"] < len(stages),
        f"train.resume: {path} is in stage {position['stage']} but train.stages has {len(stages)}",
    )
    if payload.get("world_size") != session.env.world_size:
        log.warning(
            "resuming a %s-rank checkpoint on %d ranks: the data position is approximate and not bitwise",
            payload.get("world_size"),
            session.env.world_size,
        )
    log.info(
        "resuming from %s at step %d (stage %d, epoch %d, batch %d)",
        path,
        position["step"],
        position["stage"],
        position["epoch"],
        position["batch_in_epoch"],
    )


def card_facts(data_cfg: Optional[DataConfig], mix_cfg: Optional[MixConfig]) -> Dict[str, Any]:
    """The data and caption-mixture facts of the export's model card (``train_clip.model_card``)."""
    return {
        "data": data_cfg.train_shards or data_cfg.name if data_cfg is not None else "in-memory source (no data config)",
        "strategy": mix_cfg.strategy if mix_cfg is not None else "n/a",
        "p": mix_cfg.p_original if mix_cfg is not None else None,
        "reduction": mix_cfg.reduction_label() if mix_cfg is not None else "full",
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }


def finish(
    session: Session,
    model: torch.nn.Module,
    position: ckpt.Position,
    global_batches: List[int],
    facts: Optional[Dict[str, Any]] = None,
) -> Tuple[str, str]:
    """Export the final weights (rank 0) with a model card of ``facts`` (``card_facts``); returns (export folder,
    exported weights file)."""
    export_dir = os.path.join(session.out_dir, EXPORT_DIR)
    final_size = session.train_cfg.stages[-1].image_size
    export_path = os.path.join(export_dir, EXPORT_WEIGHTS)
    check_finite_weights(unwrap(model), f"model {session.model_cfg.name} after step {position.step}")
    if session.env.is_main:
        card = {
            "model": session.model_cfg.name,
            **(facts or card_facts(None, None)),
            "budget": {"steps": position.step, "samples_seen": position.samples_seen, "global_batch": global_batches},
        }
        export_path = export_model(
            unwrap(model), session.model_cfg, final_size, export_dir, session.tokenizer, card=card
        )
        log.info(
            "exported %s (load: open_clip.create_model_and_transforms(%r, pretrained=%r) or 'local-dir:%s')",
            export_path,
            session.model_cfg.name,
            export_path,
            export_dir,
        )
    barrier(session.env)
    return export_dir, export_path


def to_device(
    batch: Dict[str, Any], device: torch.device, image_dtype: Optional[torch.dtype], pad_id: Optional[int] = None
) -> Dict[str, torch.Tensor]:
    """Images and tokens on the training device (images in the model's input dtype); with ``pad_id`` (a text tower
    for which trimming is exact: ``towers.text_trim.trim_pad_id``) the all-padding token columns are dropped first."""
    text = batch["text"] if pad_id is None else trim_padding(batch["text"], pad_id)
    return {
        "image": batch["image"].to(device=device, dtype=image_dtype, non_blocking=True),
        "text": text.to(device=device, non_blocking=True),
    }


@dataclass
class StageState:
    """The per-stage training objects a checkpoint stores."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: Optional[torch.amp.GradScaler]


def caption_loss_weight(model: torch.nn.Module, cfg: TrainConfig) -> Optional[float]:
    """``train.caption_loss_weight`` for a CoCa (a model with a multimodal text decoder), None for a CLIP."""
    if not hasattr(model, "text_decoder"):
        return None
    require(
        cfg.accum_steps == 1,
        f"train.accum_steps={cfg.accum_steps}: CoCa training here supports accum_steps=1 (the captioning loss is per micro-batch)",
    )
    return cfg.caption_loss_weight


def stage_objects(
    session: Session, model: torch.nn.Module, stage: StageConfig, payload: Optional[Dict[str, Any]]
) -> StageState:
    """Optimizer, schedule and scaler for a stage, restored from ``payload`` when resuming inside it."""
    cfg, env = session.train_cfg, session.env
    optimizer = build_optimizer(model, cfg, stage)
    steps = stage.num_steps(env.world_size, cfg.accum_steps)
    schedule = LRSchedule(
        optimizer, stage.lr, stage.num_warmup_steps(env.world_size, cfg.accum_steps), steps, cfg.schedule
    )
    _, scaler = precision_context(cfg.precision, env.device)
    if payload:
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["scheduler"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        restore_rank_rng(payload, env, cfg.seed, payload["position"]["step"])
    return StageState(model, optimizer, schedule, scaler)


def restore_rank_rng(payload: Dict[str, Any], env: DistEnv, seed: int, step: int) -> None:
    """Restore this rank's RNG states; with another world size, reseed from (seed, rank, step) instead."""
    states = payload["rng"]
    if len(states) == env.world_size:
        ckpt.restore_rng(states[env.rank])
        return
    log.warning(
        "checkpoint has RNG states of %d rank(s) but %d run now; reseeding (the run continues, not bitwise)",
        len(states),
        env.world_size,
    )
    seed_everything(seed + 1_000_003 * step + env.rank)


def run_recipe_stage(
    session: Session,
    model: torch.nn.Module,
    index: int,
    position: ckpt.Position,
    payload: Optional[Dict[str, Any]],
    monitor: RunMonitor,
    last_loss: Optional[float],
    resumed: List[Dict[str, Any]],
    checkpoint_path: str,
) -> StageEnd:
    """Train one stage from ``position`` to its last step; saves checkpoints along the way and at the end
    (``last_loss``, ``resumed``: what a checkpoint records; ``checkpoint_path``: the newest one so far, "" when none).
    ``payload``: the checkpoint resumed inside this stage, else None."""
    cfg, env = session.train_cfg, session.env
    stage = cfg.stages[index]
    steps = stage.num_steps(env.world_size, cfg.accum_steps)
    global_batch = stage.global_batch(env.world_size, cfg.accum_steps)
    state = stage_objects(session, model, stage, payload)
    if session.image_features is not None:
        forward_model: torch.nn.Module = FeatureInputCLIP(model)
    elif session.pad_id is not None and text_pad_id(model) is None:
        forward_model = TrimmedTextCLIP(
            model
        )  # causal open_clip text tower: positional embeddings and mask cut to the batch
    else:
        forward_model = model
    train_model = wrap_ddp(forward_model, env)
    if session.model_cfg.torch_compile:
        train_model = torch.compile(train_model)
    autocast, _ = precision_context(cfg.precision, env.device)
    ctx = StepContext(
        train_model,
        make_loss(env, cfg.local_loss, cfg.gather_with_grad, caption_loss_weight(model, cfg)),
        state.optimizer,
        autocast,
        state.scaler,
        cfg.grad_clip_norm,
    )
    batch_text = f"{global_batch} (= {stage.batch_size} x {env.world_size} ranks x {cfg.accum_steps} accum)"
    log.info("stage %d: %d px, %d steps, global batch %s, lr %g", index, stage.image_size, steps, batch_text, stage.lr)
    request = LoaderRequest(
        index,
        stage.image_size,
        train_transform(model),
        session.tokenizer,
        stage.batch_size,
        env.rank,
        env.world_size,
        cfg.seed,
        session.image_features,
    )
    stream = DataStream(
        session.loader_factory(request),
        env,
        position.epoch,
        position.batch_in_epoch,
        lambda epoch, stats: monitor.epoch_end(epoch, stats, batch_text, index),
    )
    image_dtype = get_input_dtype(session.model_cfg.precision)
    model.train()
    loop_started, first_samples = time.perf_counter(), position.samples_seen
    while position.stage_step < steps:
        lr = state.schedule.set_step(position.stage_step)
        guard = functools.partial(check_finite_loss, env=env, step=position.step + 1, last_checkpoint=checkpoint_path)
        loss = train_step(
            ctx, [to_device(b, env.device, image_dtype, session.pad_id) for b in stream.take(cfg.accum_steps)], guard
        )
        position.stage_step, position.step = position.stage_step + 1, position.step + 1
        position.samples_seen += global_batch
        position.epoch, position.batch_in_epoch = stream.epoch, stream.batch_in_epoch
        extra = {"stage": index, "epoch": position.epoch, "global_batch": global_batch}
        scalars = {"logit_scale": model.logit_scale.detach().exp()}
        record = monitor.step_done(
            position.step, position.samples_seen, loss, lr, scalars, extra, force=position.stage_step == steps
        )
        if record is not None:
            last_loss = record["loss"]
        if (
            cfg.checkpoint_every_steps
            and position.step % cfg.checkpoint_every_steps == 0
            and position.stage_step < steps
        ):
            checkpoint_path = save(session, state, position, last_loss, resumed, checkpoint_path)
    train_time_s = time.perf_counter() - loop_started
    trained_samples = position.samples_seen - first_samples
    stream.epoch_end_partial()
    position.epoch, position.batch_in_epoch = stream.epoch, stream.batch_in_epoch
    checkpoint_path = save(session, state, position, last_loss, resumed, checkpoint_path)
    return StageEnd(position, last_loss, checkpoint_path, train_time_s, trained_samples)


def save(
    session: Session,
    state: StageState,
    position: ckpt.Position,
    last_loss: Optional[float],
    resumed: List[Dict[str, Any]],
    latest: str,
) -> str:
    """Write the checkpoint of ``position`` (rank 0; every rank contributes its RNG state) with ``last_loss`` and
    ``resumed``, keep the newest few. Nothing is written when ``latest`` (the newest checkpoint so far) already is
    this step's. Returns this step's path."""
    env = session.env
    path = ckpt.checkpoint_path(session.out_dir, position.step)
    rng_states = gather_objects(ckpt.capture_rng(), env)
    if env.is_main and path != latest:
        payload = {
            "model": {k: v.detach().to("cpu") for k, v in unwrap(state.model).state_dict().items()},
            "optimizer": state.optimizer.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else {},
            "scheduler": state.schedule.state_dict(),
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
