"""One optimizer step: contrastive loss over the whole (possibly accumulated) batch, backward, clip, AdamW.

Gradient accumulation keeps the loss exact over all ``accum_steps`` micro-batches, as open_clip_train's
``--accum-freq``: features of every micro-batch are first computed without gradient; then each micro-batch
is re-forwarded with gradient and its loss is taken against the cached features of the others. Summing
those backward passes gives the gradient of the full-batch loss. Unlike open_clip_train, the logit scale
receives its gradient from one pass only (the last), not once per micro-batch.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, List, Optional

import torch
from open_clip import ClipLoss, CoCaLoss

from training.distributed import DistEnv, unwrap

Batch = Dict[str, torch.Tensor]
MAX_LOGIT_SCALE = math.log(100)


@dataclass
class StepContext:
    """Everything a step needs besides the batch."""

    model: torch.nn.Module
    loss_fn: ClipLoss
    optimizer: torch.optim.Optimizer
    autocast: Callable[[], ContextManager]
    scaler: Optional[torch.amp.GradScaler] = None
    grad_clip_norm: Optional[float] = None


def make_loss(
    env: DistEnv, local_loss: bool, gather_with_grad: bool, caption_loss_weight: Optional[float] = None
) -> ClipLoss:
    """open_clip's contrastive loss; distributed: local rows against features gathered with gradient.

    ``caption_loss_weight`` (a CoCa model): open_clip's ``CoCaLoss`` = contrastive loss + that weight x the
    captioning cross-entropy of the multimodal decoder (CoCa, Yu et al. 2022; open_clip_train's default weight 2).
    """
    if env.distributed and gather_with_grad:
        quiet_open_clip_gather()
    if caption_loss_weight is not None:
        return CoCaLoss(
            caption_loss_weight=caption_loss_weight,
            clip_loss_weight=1.0,
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            cache_labels=True,
            rank=env.rank,
            world_size=env.world_size,
        )
    return ClipLoss(
        local_loss=local_loss,
        gather_with_grad=gather_with_grad,
        cache_labels=True,
        rank=env.rank,
        world_size=env.world_size,
    )


def quiet_open_clip_gather() -> None:
    """Silence exactly the FutureWarning of open_clip's gather with gradient, once per process.

    open_clip's ``gather_features(gather_with_grad=True)`` (its ``loss.py``) calls ``torch.distributed.nn.all_gather``,
    which torch deprecates in favour of a private functional collective; the call is open_clip's, its gradient is the
    one the loss needs, and the warning (two per rank in every run: image and text features) asks nothing of the
    user. Only that message from ``open_clip.loss`` is ignored; every other warning still shows.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
        category=FutureWarning,
        module=r"open_clip\.loss",
    )


def encode(model: torch.nn.Module, batch: Batch) -> Dict[str, torch.Tensor]:
    """Model outputs as a dict: image_features, text_features, logit_scale (and logit_bias for SigLIP-style models)."""
    out = model(batch["image"], batch["text"])
    if isinstance(out, dict):
        return out
    keys = ("image_features", "text_features", "logit_scale", "logit_bias")
    return dict(zip(keys, out))


def contrastive_loss(
    loss_fn: ClipLoss, image: torch.Tensor, text: torch.Tensor, out: Dict[str, torch.Tensor], scale: torch.Tensor
) -> torch.Tensor:
    """ClipLoss on the given features with the given (exp'd) logit scale; CoCaLoss adds the captioning loss of the
    multimodal decoder's ``logits`` against ``labels`` (the text shifted by one)."""
    if isinstance(loss_fn, CoCaLoss):
        clip_part, caption_part = loss_fn(image, text, out["logits"], out["labels"], scale)
        return clip_part + caption_part
    return loss_fn(image, text, scale, logit_bias=out.get("logit_bias"))


def backward(loss: torch.Tensor, scaler: Optional[torch.amp.GradScaler]) -> None:
    """loss.backward(), through the GradScaler when there is one."""
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()


def single_pass(ctx: StepContext, batch: Batch) -> torch.Tensor:
    """Forward + backward of one micro-batch (no accumulation); returns the detached loss."""
    with ctx.autocast():
        out = encode(ctx.model, batch)
        loss = contrastive_loss(ctx.loss_fn, out["image_features"], out["text_features"], out, out["logit_scale"])
    backward(loss, ctx.scaler)
    return loss.detach()


def accumulated_passes(ctx: StepContext, micro_batches: List[Batch]) -> torch.Tensor:
    """Exact full-batch gradient over several micro-batches (cache features, then re-forward each with grad)."""
    with torch.no_grad(), ctx.autocast():
        cached = [encode(ctx.model, b) for b in micro_batches]
    images = [c["image_features"] for c in cached]
    texts = [c["text_features"] for c in cached]
    loss_value = torch.zeros((), device=images[0].device)
    last = len(micro_batches) - 1
    for j, batch in enumerate(micro_batches):
        sync = contextlib.nullcontext() if j == last or not hasattr(ctx.model, "no_sync") else ctx.model.no_sync()
        with sync:
            with ctx.autocast():
                out = encode(ctx.model, batch)
                all_images = torch.cat(images[:j] + [out["image_features"]] + images[j + 1 :])
                all_texts = torch.cat(texts[:j] + [out["text_features"]] + texts[j + 1 :])
                scale = out["logit_scale"] if j == last else out["logit_scale"].detach()
                loss = contrastive_loss(ctx.loss_fn, all_images, all_texts, out, scale)
            backward(loss, ctx.scaler)
        if j == last:
            loss_value = loss.detach()
    return loss_value


def optimizer_step(ctx: StepContext) -> Optional[torch.Tensor]:
    """Clip gradients (returns the pre-clip norm), step AdamW, clamp the logit scale to [0, ln 100]."""
    params = [p for group in ctx.optimizer.param_groups for p in group["params"]]
    grad_norm = None
    if ctx.scaler is not None:
        ctx.scaler.unscale_(ctx.optimizer)
    if ctx.grad_clip_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip_norm)
    if ctx.scaler is not None:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        ctx.optimizer.step()
    with torch.no_grad():
        unwrap(ctx.model).logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return grad_norm


def compute_gradients(ctx: StepContext, micro_batches: List[Batch]) -> torch.Tensor:
    """Fresh gradients of the contrastive loss over all ``micro_batches``; returns the detached loss."""
    ctx.optimizer.zero_grad(set_to_none=True)
    if len(micro_batches) == 1:
        return single_pass(ctx, micro_batches[0])
    return accumulated_passes(ctx, micro_batches)


def train_step(
    ctx: StepContext, micro_batches: List[Batch], before_update: Optional[Callable[[torch.Tensor], None]] = None
) -> torch.Tensor:
    """One optimizer step over ``micro_batches`` (one per accumulation step); returns the detached loss.

    ``before_update(loss)`` runs after backward and before the weights change (``training.guard.check_finite_loss``
    raises there, so a diverged step never reaches the weights).
    """
    loss = compute_gradients(ctx, micro_batches)
    if before_update is not None:
        before_update(loss)
    optimizer_step(ctx)
    return loss
