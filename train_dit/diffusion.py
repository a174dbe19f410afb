"""The training objective and the samplers, on diffusers schedulers.

``ddpm``: DDPMScheduler with DiT's linear betas (1e-4 .. 0.02 over 1000 steps), uniform integer timesteps,
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (``add_noise``), target eps (epsilon prediction).
``flow``: rectified flow as FlowMatchEulerDiscreteScheduler samples it: sigma = sigmoid(n), n ~ N(mean, std)
(logit-normal, SD3), x_t = (1 - sigma) x0 + sigma eps, target = eps - x0 (velocity), model timestep = 1000 sigma.
``prediction="sample"`` (flow only; JiT, Li & He 2025): the transformer outputs x0 and is trained with the velocity
loss, v = (x_t - x0) / max(sigma, ``SIGMA_FLOOR``) on both sides (``velocity_from_sample``), so its loss weights
x0's error by 1 / max(sigma, 0.05)^2; at sampling its output is turned into the velocity the scheduler steps with, exactly.
Samplers: ``ddpm`` (the paper's 250 steps), ``dpm++`` (DPMSolverMultistepScheduler, ``dpmsolver++``, ~25 steps),
``euler`` (flow).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from harness_infra.errors import require
from train_dit.config import SAMPLERS_OF, DitTrainConfig


def training_scheduler(cfg: DitTrainConfig) -> Any:
    """The diffusers scheduler of the recipe (its config is exported beside the transformer)."""
    if cfg.scheduler == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps, shift=1.0)
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="linear",
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type="epsilon",
        variance_type="fixed_small",
        clip_sample=False,
    )


SIGMA_FLOOR = 0.05  # JiT's t_eps: the velocity of an x0 prediction divides by max(sigma, 0.05)


def velocity_from_sample(
    x0: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, floor: float = SIGMA_FLOOR
) -> torch.Tensor:
    """The flow velocity (x_t - x0) / max(sigma, floor), shaped like ``x_t`` [B, ...], of an x0 (prediction or truth)
    at noise level ``sigma`` [B]; with ``floor`` = 0 it is exactly the velocity whose Euler or DPM-Solver++ x0 estimate
    (x_t - sigma v) is ``x0`` (sampling, where every sigma the model sees is > 0; sigma = 0 would give inf, not an
    error); training uses JiT's floor on prediction and target alike."""
    s = sigma.view(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype)
    return (x_t - x0) / (s.clamp_min(floor) if floor > 0 else s)


def noisy_inputs(
    scheduler: Any, cfg: DitTrainConfig, x0: torch.Tensor, generators: List[torch.Generator]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, model timesteps [B] float, target) for clean ``x0`` [B, C, S, S]; sample i's timestep and noise come
    from ``generators[i]`` (CPU), so they do not depend on the batch or rank the sample is in. The target is what
    the loss compares ``training_output`` with: epsilon (ddpm) or the velocity (flow; floored for ``sample``)."""
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators]).to(x0.device, x0.dtype)
    if cfg.scheduler == "flow":
        normal = torch.cat([torch.randn(1, generator=g) for g in generators])
        sigma = torch.sigmoid(cfg.logit_mean + cfg.logit_std * normal).to(x0.device, x0.dtype)
        s = sigma.view(-1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        target = velocity_from_sample(x0, x_t, sigma) if cfg.resolved_prediction == "sample" else noise - x0
        return x_t, sigma * cfg.num_train_timesteps, target
    steps = torch.cat([torch.randint(0, cfg.num_train_timesteps, (1,), generator=g) for g in generators])
    x_t = scheduler.add_noise(x0, noise, steps.to(x0.device))
    return x_t, steps.to(x0.device, torch.float32), noise


def training_output(
    cfg: DitTrainConfig, output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The transformer's output [B, C, S, S] as the loss sees it: itself, or for ``prediction="sample"`` its floored
    velocity (``timesteps`` = 1000 sigma)."""
    if cfg.resolved_prediction != "sample":
        return output
    return velocity_from_sample(output.float(), x_t.float(), timesteps.float() / cfg.num_train_timesteps)


FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"


def is_flow(train_scheduler_config: Dict[str, Any]) -> bool:
    """Whether an exported training scheduler config is rectified flow (else DDPM epsilon prediction)."""
    return train_scheduler_config.get("_class_name") == FLOW_SCHEDULER


def sampling_scheduler(train_scheduler_config: Dict[str, Any], sampler: str, pixel_space: bool = False) -> Any:
    """A sampler built from the exported training scheduler config (``ddpm``, ``dpm++`` or ``euler``).

    DDPM-trained (epsilon) models: ``ddpm`` or ``dpm++`` (DPM-Solver++ on the same betas); in pixel space the x0
    estimates are kept in [-1, 1], as DDPM and ADM do for pixels (``ddpm``: ``clip_sample``; ``dpm++``: dynamic
    thresholding at 1.0); latents are never clipped. Flow-trained (velocity) models: ``euler`` (FlowMatchEuler) or
    ``dpm++`` (DPMSolverMultistepScheduler with ``prediction_type="flow_prediction"`` and ``use_flow_sigmas``: x0 =
    x_t - sigma v, timesteps 1000 sigma as in training, the schedule's shift kept). Raises ConfigError for a sampler
    that does not fit the objective (``ddpm`` on a flow model, ``euler`` on an epsilon model): built from the other
    objective's config, diffusers would silently sample noise."""
    objective = "flow" if is_flow(train_scheduler_config) else "ddpm"
    require(
        sampler in SAMPLERS_OF[objective],
        f"sampler={sampler!r} does not fit a model trained with scheduler={objective}; "
        f"choose one of {', '.join(SAMPLERS_OF[objective])}",
    )
    if objective == "flow":
        if sampler == "euler":
            return FlowMatchEulerDiscreteScheduler.from_config(train_scheduler_config)
        return DPMSolverMultistepScheduler(
            num_train_timesteps=train_scheduler_config.get("num_train_timesteps", 1000),
            algorithm_type="dpmsolver++",
            solver_order=2,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=float(train_scheduler_config.get("shift", 1.0)),
        )
    if sampler == "dpm++":
        return DPMSolverMultistepScheduler.from_config(
            train_scheduler_config,
            algorithm_type="dpmsolver++",
            solver_order=2,
            thresholding=pixel_space,
            sample_max_value=1.0,
        )
    return DDPMScheduler.from_config(train_scheduler_config, clip_sample=pixel_space, clip_sample_range=1.0)


def model_timestep(scheduler: Any, index: int, t: Any) -> float:
    """The timestep the model is given at sampling step ``index`` (scheduler timestep ``t``): 1000 sigma exactly for
    DPM-Solver++ on flow sigmas, whose ``timesteps`` are sigma x 1000 rounded down to integers (up to 1e-3 off the
    sigma it steps with; the model was trained on continuous sigma), else ``t`` itself."""
    if getattr(scheduler.config, "use_flow_sigmas", False):
        return float(scheduler.sigmas[index]) * scheduler.config.num_train_timesteps
    return float(t)
