"""The one sampling loop and the sampler registry: conditions in, images in [-1, 1] out.

Notation (see iclevr.schedules): x_t is the noisy image at timestep t, eps the predicted noise (or v under
v-prediction), alpha_bar_t the cumulative signal fraction, x0 the clean image in [-1, 1].

Classifier-free guidance (Ho & Salimans 2022): eps = eps_u + s (eps_c - eps_u), computed with ONE batched
forward pass of 2B images (conditional half, then the null condition y = 0). Every image has its own
torch.Generator seeded from (seed, image index), which draws its initial noise and any stochastic sampler
noise, so image i is the same whatever the batch size or the images around it.

Self-conditioning (model.self_condition; Chen, Zhang & Hinton 2022): the model also gets the previous step's
guided x0 prediction (clipped to [-1, 1] with clip_x0; zeros at the first step), the same for both halves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from iclevr.errors import UserError
from iclevr.settings import SamplerSettings, ScheduleSettings


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler: how to build its diffusers scheduler from the training schedule, and its default steps."""

    build_scheduler: Callable[[ScheduleSettings], object]
    default_steps: int
    doc: str


def _kwargs(schedule: ScheduleSettings) -> dict:
    from iclevr.schedules import scheduler_kwargs

    return scheduler_kwargs(
        schedule.name, schedule.num_train_timesteps, schedule.prediction_type, getattr(schedule, "shift", 1.0)
    )


def _ddpm(schedule: ScheduleSettings):
    from diffusers import DDPMScheduler

    # trailing: 999..0 at 1000 steps, the reference configuration's (docs/reference-config.md)
    return DDPMScheduler(**_kwargs(schedule), timestep_spacing="trailing")


def _ddim(schedule: ScheduleSettings):
    from diffusers import DDIMScheduler

    # trailing: the first step is t = T-1, pure noise (Lin et al. 2024, "sample from the last timestep");
    # eta = 0 is passed at each step
    return DDIMScheduler(**_kwargs(schedule), timestep_spacing="trailing")


def _dpmpp(schedule: ScheduleSettings):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**_kwargs(schedule), algorithm_type="dpmsolver++", solver_order=2)


def _dpmpp_sde(schedule: ScheduleSettings):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**_kwargs(schedule), algorithm_type="sde-dpmsolver++", solver_order=2)


def _unipc(schedule: ScheduleSettings):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**_kwargs(schedule))


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(_ddpm, 1000, "Ancestral DDPM sampling, the seed's (Ho, Jain & Abbeel 2020, Algorithm 2)."),
    "ddim": SamplerSpec(_ddim, 50, "Deterministic DDIM, eta = 0 (Song, Meng & Ermon 2021, eq. 12)."),
    "dpmpp": SamplerSpec(
        _dpmpp, 20, "DPM-Solver++(2M), second-order multistep on the data prediction (Lu et al. 2022, Algorithm 2)."
    ),
    "dpmpp-sde": SamplerSpec(
        _dpmpp_sde,
        20,
        "SDE-DPM-Solver++(2M): the stochastic variant of dpmpp, fresh noise "
        "at every step like DDPM (Lu et al. 2022, section 5; Karras et al. "
        "2022 on why stochasticity corrects a network's errors).",
    ),
    "unipc": SamplerSpec(_unipc, 20, "UniPC, unified predictor-corrector (Zhao et al. 2023)."),
}


def check_sampler(name: str) -> str:
    """Return `name` if it is a registered sampler, else a UserError listing the valid ones."""
    if name not in SAMPLERS:
        raise UserError(f'unknown sampler "{name}"; valid: {", ".join(SAMPLERS)}')
    return name


def resolve_steps(sampler: SamplerSettings, schedule: ScheduleSettings | None = None) -> int:
    """The number of sampling steps: sampler.steps, or the sampler's default (never more than T)."""
    steps = sampler.steps or SAMPLERS[check_sampler(sampler.sampler)].default_steps
    T = schedule.num_train_timesteps if schedule else None
    if T is not None and steps > T:
        if sampler.steps:
            raise UserError(f"--steps {steps} exceeds the model's {T} training timesteps; use at most {T}")
        steps = T
    return steps


def image_seeds(seed: int, n: int) -> list[int]:
    """Per-image generator seeds derived from (seed, i) by mix_seed (well mixed, 63-bit)."""
    from iclevr.seeding import mix_seed

    return [mix_seed(seed, i) for i in range(n)]


def predict_x0(x_t: torch.Tensor, out: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: str):
    """x0 from the model output: eps-prediction x0 = (x_t - sqrt(1-ab) eps)/sqrt(ab); v: sqrt(ab) x_t - sqrt(1-ab) v."""
    a, s = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
    if prediction_type == "v_prediction":
        return a * x_t - s * out
    return (x_t - s * out) / a


def clip_output(x_t: torch.Tensor, out: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: str):
    """Re-express the model output so that its implied x0 lies in [-1, 1] (same parameterisation out)."""
    a, s = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
    x0 = predict_x0(x_t, out, alpha_bar_t, prediction_type).clamp(-1, 1)
    eps = (x_t - a * x0) / s
    return a * eps - s * x0 if prediction_type == "v_prediction" else eps


def guided_output(
    model, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, scale: float, x0_self: torch.Tensor | None = None
) -> torch.Tensor:
    """eps_u + s (eps_c - eps_u) from one forward pass of 2B; s == 1 runs only the conditional half (fp32 out).

    x0_self (self-conditioned models only) goes to both halves alike; None calls model(x_t, t, y) as is.
    """
    B = x_t.shape[0]
    extra = {} if x0_self is None else {"x0_self": x0_self}
    if scale == 1.0:
        return model(x_t, t.expand(B), y, **extra).float()
    if scale == 0.0:
        return model(x_t, t.expand(B), torch.zeros_like(y), **extra).float()
    if x0_self is not None:
        extra = {"x0_self": torch.cat([x0_self, x0_self])}  # (2B, 3, S, S)
    out = model(
        torch.cat([x_t, x_t]), t.expand(2 * B), torch.cat([y, torch.zeros_like(y)]), **extra
    ).float()  # (2B, 3, S, S)
    eps_c, eps_u = out.chunk(2)
    return eps_u + scale * (eps_c - eps_u)


def _step_kwargs(scheduler, generators: list[torch.Generator]) -> dict:
    """Extra step() arguments: per-image generators where the scheduler draws noise, eta = 0 for DDIM."""
    import inspect

    params = inspect.signature(scheduler.step).parameters
    kwargs = {"generator": generators} if "generator" in params else {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    return kwargs


def sample_batches(
    model,
    y: torch.Tensor,
    *,
    schedule: ScheduleSettings,
    sampler: SamplerSettings,
    callback: Callable[[dict], None] | None = None,
    seeds: list[int] | None = None,
    device=None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Draw images for conditions y (B, 24) one chunk of `sampler.batch_size` at a time: yields (start, x0).

    x0 is (b, 3, H, W) float in [-1, 1] on the CPU for images start .. start + b - 1 (a latent model's
    latents decoded by its autoencoder; callback's x_t and x0_pred stay in the space the model denoises).
    Only one chunk's UNet inputs and outputs are alive at a time, so memory does not grow with B beyond what
    the caller keeps.
    callback(dict(i, t, x_t, x0_pred, x_prev, steps, start)) is called after every step of every chunk:
    x_t is the step's input, x0_pred the predicted clean image, x_prev the step's output, `start` the index
    of the chunk's first image. `device` defaults to the model's.
    """
    scheduler = SAMPLERS[check_sampler(sampler.sampler)].build_scheduler(schedule)
    steps = resolve_steps(sampler, schedule)
    seeds = image_seeds(sampler.seed, y.shape[0]) if seeds is None else list(seeds)
    if len(seeds) != y.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {y.shape[0]} conditions")
    if getattr(model.cfg, "condition", None) == "tokens":  # duck-typed test models have no such field
        from iclevr.labels import check_object_counts

        check_object_counts(y)  # the tokens' slots (iclevr.model.ObjectTokens): one line, not a device assert
    device = torch.device(device) if device is not None else next(model.parameters()).device
    for start in range(0, y.shape[0], sampler.batch_size):
        chunk = seeds[start : start + sampler.batch_size]
        yield (
            start,
            _denoise(
                model,
                y[start : start + len(chunk)],
                chunk,
                scheduler,
                steps,
                schedule,
                sampler,
                device,
                callback,
                start,
            ),
        )


@torch.inference_mode()
def _denoise(
    model,
    y: torch.Tensor,
    seeds: list[int],
    scheduler,
    steps: int,
    schedule: ScheduleSettings,
    sampler: SamplerSettings,
    device,
    callback,
    start: int,
) -> torch.Tensor:
    """The sampling loop for one chunk: conditions y (b, 24), one seed per image -> x0 (b, 3, S, S) on the CPU."""
    from iclevr.device import autocast

    shape = x_shape(model)  # (C, H, W): pixels, or latents decoded at the end
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    y = y.to(device=device, dtype=torch.float32)  # (b, 24)
    x = torch.cat([torch.randn((1, *shape), generator=g) for g in gens]).to(device)  # (b, C, H, W) x_T
    x = x * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps, device=device)  # before every chunk: multistep schedulers keep state
    kwargs = _step_kwargs(scheduler, gens)
    alpha_bars = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    self_condition = getattr(model.cfg, "self_condition", False)  # duck-typed test models have no such field
    x0_self = torch.zeros_like(x) if self_condition else None  # (b, C, H, W): no estimate yet
    clip = sampler.clip_x0 and clips_x0(model)
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        with autocast(device):
            eps = guided_output(model, x_in, t.to(device), y, sampler.guidance_scale, x0_self)
        if x0_self is not None:  # the next step's estimate: this step's guided x0, clipped like the step's
            x0_self = predict_x0(x, eps, alpha_bars[int(t)], schedule.prediction_type)
            x0_self = x0_self.clamp(-1, 1) if clip else x0_self
        if clip:
            eps = clip_output(x, eps, alpha_bars[int(t)], schedule.prediction_type)
        x_prev = scheduler.step(eps, t, x, **kwargs).prev_sample.float()
        if callback is not None:
            x0_pred = predict_x0(x, eps, alpha_bars[int(t)], schedule.prediction_type)
            callback(dict(i=i, t=int(t), x_t=x, x0_pred=x0_pred, x_prev=x_prev, steps=steps, start=start))
        x = x_prev
    return to_images(model, x.float()).clamp(-1, 1).cpu()


def clips_x0(model) -> bool:
    """Whether x0 lives in [-1, 1] and clip_x0 applies: pixels yes; a latent model's scaled latents (unit
    variance, unbounded) no: clipping them to [-1, 1] would wash out every decoded colour."""
    return getattr(getattr(model, "cfg", None), "design", "pixels") != "latent"


def x_shape(model) -> tuple[int, int, int]:
    """(C, H, W) the model denoises (duck-typed models without `x_shape`: RGB at cfg.sample_size)."""
    S = model.cfg.sample_size
    return getattr(model, "x_shape", (3, S, S))


def to_images(model, x0: torch.Tensor) -> torch.Tensor:
    """RGB images in [-1, 1] of denoised x0: decoded by a latent model's autoencoder, else x0 as is."""
    return model.to_images(x0) if hasattr(model, "to_images") else x0


def sample(
    model,
    y: torch.Tensor,
    *,
    schedule: ScheduleSettings,
    sampler: SamplerSettings,
    callback: Callable[[dict], None] | None = None,
    seeds: list[int] | None = None,
    device=None,
) -> torch.Tensor:
    """Draw images for conditions y (B, 24); returns x0 (B, 3, S, S) float in [-1, 1] on the CPU.

    All chunks of sample_batches() (same arguments, same callback) concatenated.
    """
    out = [
        x
        for _, x in sample_batches(
            model, y, schedule=schedule, sampler=sampler, callback=callback, seeds=seeds, device=device
        )
    ]
    return torch.cat(out) if out else torch.zeros(0, 3, *x_shape(model)[1:])
