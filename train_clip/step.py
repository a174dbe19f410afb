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
import torch.nn.functional as F
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


class MultiPositiveClipLoss(ClipLoss):
    """The multi-positive contrastive loss of DreamLIP (Zheng et al., ECCV 2024): each image has n positive texts.

    Texts come image-major, n per image: with B images on a rank, text rows i n ... i n + n - 1 are image i's (the
    caption loader's batches under ``mix.positives`` = n; n = texts / images). Over the batch (all ranks' features,
    gathered with gradient exactly as open_clip's ``ClipLoss`` does, ``get_logits``), with s_it = logit_scale x
    <image i, text t> (+ logit_bias):

    - image -> text: for each image i, the n positives share ONE softmax denominator over every text of the batch,
      L_i = -1/n sum_j log( exp(s_i,p_ij) / sum_t exp(s_it) ), averaged over images (= cross-entropy of image i's row
      against each positive in turn, the rows repeated n times);
    - text -> image: each text's cross-entropy against its own image;
    - loss = (image -> text + text -> image) / 2.

    With n = 1 both terms are open_clip's ``ClipLoss`` terms, computed by the same calls, so the value is identical.
    """

    def forward(  # type: ignore[override]
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: Optional[torch.Tensor] = None,
        output_dict: bool = False,
    ):
        images, texts = len(image_features), len(text_features)
        if texts % images:
            raise ValueError(f"{texts} text features for {images} images: the multi-positive loss needs n per image")
        n = texts // images
        per_image, per_text = self.get_logits(image_features, text_features, logit_scale, logit_bias=logit_bias)
        rows = per_image.shape[0]  # this rank's images (local loss) or every rank's
        first = rows * self.rank if self.world_size > 1 and self.local_loss else 0  # global index of the first row
        device = image_features.device
        positives = first * n + torch.arange(rows * n, device=device)  # row i's j-th positive: (first + i) n + j
        owners = first + torch.div(torch.arange(per_text.shape[0], device=device), n, rounding_mode="floor")
        image_to_text = F.cross_entropy(per_image.repeat_interleave(n, dim=0) if n > 1 else per_image, positives)
        text_to_image = F.cross_entropy(per_text, owners)
        total = (image_to_text + text_to_image) / 2
        return {"contrastive_loss": total} if output_dict else total


def make_loss(
    env: DistEnv, local_loss: bool, gather_with_grad: bool, caption_loss_weight: Optional[float] = None
) -> ClipLoss:
    """The contrastive loss: ``MultiPositiveClipLoss`` (open_clip's ``ClipLoss`` with n positive texts per image; with
    one text per image its value is ClipLoss's); distributed: local rows against features gathered with gradient.

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
    return MultiPositiveClipLoss(
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
