"""Noise schedules: a registry of small pure functions T -> betas (float64, shape (T,)).

Notation used across iclevr:
  x0         clean image in [-1, 1], (B, 3, H, W)
  t          integer timestep in [0, T)
  beta_t     noise variance added at step t
  alpha_bar  cumulative product of (1 - beta): x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
  eps        standard Gaussian noise; v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (v-prediction)
  SNR(t)     alpha_bar_t / (1 - alpha_bar_t)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from iclevr.errors import UserError

BetaFn = Callable[[int], torch.Tensor]
SCHEDULES: dict[str, BetaFn] = {}
DIFFUSERS_BUILTIN = {"linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"}
BETA_START, BETA_END = 1e-4, 0.02  # DDPMScheduler's defaults (Ho et al. 2020)


def register(name: str) -> Callable[[BetaFn], BetaFn]:
    """Decorator adding a beta function to the registry under `name`."""

    def deco(fn: BetaFn) -> BetaFn:
        SCHEDULES[name] = fn
        return fn

    return deco


@register("linear")
def linear(T: int) -> torch.Tensor:
    """Linear betas from 1e-4 to 0.02 (Ho, Jain & Abbeel 2020, DDPM, section 4)."""
    return torch.linspace(BETA_START, BETA_END, T, dtype=torch.float64)


@register("scaled_linear")
def scaled_linear(T: int) -> torch.Tensor:
    """Betas linear in sqrt-space: linspace(sqrt(1e-4), sqrt(0.02))^2 (Rombach et al. 2022, LDM)."""
    return torch.linspace(BETA_START**0.5, BETA_END**0.5, T, dtype=torch.float64) ** 2


@register("sigmoid")
def sigmoid(T: int) -> torch.Tensor:
    """sigmoid(linspace(-6, 6)) scaled to [1e-4, 0.02] (Xu et al. 2022, GeoDiff, appendix)."""
    return torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (BETA_END - BETA_START) + BETA_START


@register("squaredcos_cap_v2")
def squaredcos_cap_v2(T: int) -> torch.Tensor:
    """Nichol & Dhariwal 2021 (Improved DDPM, eq. 17): alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
    s = 0.008, beta_t = min(1 - alpha_bar(t+1)/alpha_bar(t), 0.999)."""

    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)


@register("cosine")
def cosine(T: int) -> torch.Tensor:
    """Cosine-interpolated betas: beta_t = b0 + (b1 - b0)(1 - cos(pi t/(T-1)))/2, b0 = 1e-4, b1 = 0.02.

    The "cosine" of several course solutions: the linear schedule's end points joined by a half cosine
    (the SGDR curve of Loshchilov & Hutter 2017 applied to beta). It is not Nichol & Dhariwal's
    alpha_bar-cosine, which is `squaredcos_cap_v2`. diffusers has no such schedule, so it is passed as
    `trained_betas`.
    """
    t = torch.arange(T, dtype=torch.float64)
    return BETA_START + (BETA_END - BETA_START) * (1 - torch.cos(math.pi * t / (T - 1))) / 2


def check_name(name: str) -> str:
    """Return `name` if it is a registered schedule, else a clear UserError listing the valid ones."""
    if name not in SCHEDULES:
        raise UserError(f'unknown noise schedule "{name}"; valid: {", ".join(SCHEDULES)}')
    return name


def betas(name: str, T: int) -> torch.Tensor:
    """Betas (T,) float64 of a registered schedule."""
    return SCHEDULES[check_name(name)](T)


def alpha_bar(name: str, T: int) -> torch.Tensor:
    """alpha_bar (T,) float64 = cumprod(1 - beta)."""
    return torch.cumprod(1.0 - betas(name, T), dim=0)


def log_snr(name: str, T: int) -> torch.Tensor:
    """log SNR(t) = log(alpha_bar / (1 - alpha_bar)), (T,) float64."""
    ab = alpha_bar(name, T)
    return torch.log(ab) - torch.log1p(-ab)


def shift_alpha_bar(ab: torch.Tensor, shift: float) -> torch.Tensor:
    """The resolution-shifted schedule of Hoogeboom, Heek & Salimans 2023 ("simple diffusion", eq. 4):
    log SNR'(t) = log SNR(t) - 2 log(shift), i.e. alpha_bar' = sigmoid(logit(alpha_bar) - 2 log(shift))."""
    return torch.sigmoid(torch.logit(ab) - 2 * math.log(shift))


def betas_from_alpha_bar(ab: torch.Tensor, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} (alpha_bar_{-1} = 1), capped at max_beta like DDPM's cosine."""
    prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    return (1 - ab / prev).clamp(max=max_beta)


def scheduler_kwargs(name: str, T: int, prediction_type: str = "epsilon", shift: float = 1.0) -> dict:
    """Keyword arguments that build any diffusers scheduler on this schedule (no from_config pitfalls); a
    resolution shift other than 1 passes the shifted schedule as trained_betas."""
    kwargs = {"num_train_timesteps": T, "prediction_type": prediction_type}
    if shift != 1.0:
        kwargs.update(trained_betas=betas_from_alpha_bar(shift_alpha_bar(alpha_bar(name, T), shift)).tolist())
    elif check_name(name) in DIFFUSERS_BUILTIN:
        kwargs.update(beta_schedule=name, beta_start=BETA_START, beta_end=BETA_END)
    else:
        kwargs.update(trained_betas=betas(name, T).tolist())
    return kwargs


def make_scheduler(schedule) -> diffusers.DDPMScheduler:  # noqa: F821
    """The training DDPMScheduler for a ScheduleSettings section."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        **scheduler_kwargs(
            schedule.name, schedule.num_train_timesteps, schedule.prediction_type, getattr(schedule, "shift", 1.0)
        )
    )
