"""The one sampling loop, the sampler registry, and output helpers (grids, individual PNGs).

Notation (see iclevr.schedules): x_t is the noisy image at timestep t, eps the predicted noise (or v under
v-prediction), alpha_bar_t the cumulative signal fraction, x0 the clean image in [-1, 1].

Classifier-free guidance (Ho & Salimans 2022): eps = eps_u + s (eps_c - eps_u), computed with ONE batched
forward pass of 2B images (conditional half, then the null condition y = 0). Every image has its own
torch.Generator seeded from (seed, image index), which draws its initial noise and any stochastic sampler
noise, so image i is the same whatever the batch size or the images around it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from pydantic import BaseModel, ConfigDict, Field

from iclevr.errors import UserError
from iclevr.settings import SamplerSettings, ScheduleSettings

OUTPUT_SIZE = 64  # the course's image size: outputs are resized to 64x64 when the model runs lower


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler: how to build its diffusers scheduler from the training schedule, and its default steps."""

    build_scheduler: Callable[[ScheduleSettings], object]
    default_steps: int
    doc: str


def _kwargs(schedule: ScheduleSettings) -> dict:
    from iclevr.schedules import scheduler_kwargs

    return scheduler_kwargs(schedule.name, schedule.num_train_timesteps, schedule.prediction_type)


def _ddpm(schedule: ScheduleSettings):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**_kwargs(schedule), timestep_spacing="trailing")  # = the seed's 999..0 at 1000 steps


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
    "dpmpp": SamplerSpec(_dpmpp, 20, "DPM-Solver++(2M), second-order multistep on the data prediction "
                                     "(Lu et al. 2022, Algorithm 2)."),
    "dpmpp-sde": SamplerSpec(_dpmpp_sde, 20, "SDE-DPM-Solver++(2M): the stochastic variant of dpmpp, fresh noise "
                                             "at every step like DDPM (Lu et al. 2022, section 5; Karras et al. "
                                             "2022 on why stochasticity corrects a network's errors)."),
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
    """Per-image generator seeds derived from (seed, i) with numpy's SeedSequence (well mixed, 63-bit)."""
    import numpy as np

    return [int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] >> 1) for i in range(n)]


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


def guided_output(model, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_u + s (eps_c - eps_u) from one forward pass of 2B; s == 1 runs only the conditional half (fp32 out)."""
    B = x_t.shape[0]
    if scale == 1.0:
        return model(x_t, t.expand(B), y).float()
    if scale == 0.0:
        return model(x_t, t.expand(B), torch.zeros_like(y)).float()
    out = model(torch.cat([x_t, x_t]), t.expand(2 * B), torch.cat([y, torch.zeros_like(y)])).float()  # (2B, 3, S, S)
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


def sample_batches(model, y: torch.Tensor, *, schedule: ScheduleSettings, sampler: SamplerSettings,
                   callback: Callable[[dict], None] | None = None, seeds: list[int] | None = None,
                   device=None) -> Iterator[tuple[int, torch.Tensor]]:
    """Draw images for conditions y (B, 24) one chunk of `sampler.batch_size` at a time: yields (start, x0).

    x0 is (b, 3, S, S) float in [-1, 1] on the CPU for images start .. start + b - 1. Only one chunk's UNet
    inputs and outputs are alive at a time, so memory does not grow with B beyond what the caller keeps.
    callback(dict(i, t, x_t, x0_pred, x_prev, steps, start)) is called after every step of every chunk:
    x_t is the step's input, x0_pred the predicted clean image, x_prev the step's output, `start` the index
    of the chunk's first image. `device` defaults to the model's.
    """
    scheduler = SAMPLERS[check_sampler(sampler.sampler)].build_scheduler(schedule)
    steps = resolve_steps(sampler, schedule)
    seeds = image_seeds(sampler.seed, y.shape[0]) if seeds is None else list(seeds)
    if len(seeds) != y.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {y.shape[0]} conditions")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    for start in range(0, y.shape[0], sampler.batch_size):
        chunk = seeds[start:start + sampler.batch_size]
        yield start, _denoise(model, y[start:start + len(chunk)], chunk, scheduler, steps, schedule, sampler,
                              device, callback, start)


@torch.inference_mode()
def _denoise(model, y: torch.Tensor, seeds: list[int], scheduler, steps: int, schedule: ScheduleSettings,
             sampler: SamplerSettings, device, callback, start: int) -> torch.Tensor:
    """The sampling loop for one chunk: conditions y (b, 24), one seed per image -> x0 (b, 3, S, S) on the CPU."""
    from iclevr.device import autocast

    S = model.cfg.sample_size
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    y = y.to(device=device, dtype=torch.float32)  # (b, 24)
    x = torch.cat([torch.randn((1, 3, S, S), generator=g) for g in gens]).to(device)  # (b, 3, S, S) x_T
    x = x * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps, device=device)  # before every chunk: multistep schedulers keep state
    kwargs = _step_kwargs(scheduler, gens)
    alpha_bars = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        with autocast(device):
            eps = guided_output(model, x_in, t.to(device), y, sampler.guidance_scale)
        if sampler.clip_x0:
            eps = clip_output(x, eps, alpha_bars[int(t)], schedule.prediction_type)
        x_prev = scheduler.step(eps, t, x, **kwargs).prev_sample.float()
        if callback is not None:
            x0_pred = predict_x0(x, eps, alpha_bars[int(t)], schedule.prediction_type)
            callback(dict(i=i, t=int(t), x_t=x, x0_pred=x0_pred, x_prev=x_prev, steps=steps, start=start))
        x = x_prev
    return x.clamp(-1, 1).float().cpu()


def sample(model, y: torch.Tensor, *, schedule: ScheduleSettings, sampler: SamplerSettings,
           callback: Callable[[dict], None] | None = None, seeds: list[int] | None = None,
           device=None) -> torch.Tensor:
    """Draw images for conditions y (B, 24); returns x0 (B, 3, S, S) float in [-1, 1] on the CPU.

    All chunks of sample_batches() (same arguments, same callback) concatenated.
    """
    out = [x for _, x in sample_batches(model, y, schedule=schedule, sampler=sampler, callback=callback,
                                        seeds=seeds, device=device)]
    S = model.cfg.sample_size
    return torch.cat(out) if out else torch.zeros(0, 3, S, S)


def to_output_size(x: torch.Tensor, size: int = OUTPUT_SIZE) -> torch.Tensor:
    """Bilinear resize of (B, 3, S, S) to (B, 3, size, size) when the model runs at another resolution."""
    import torch.nn.functional as F

    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=x.shape[-1] > size).clamp(-1, 1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 in [0, 255], same shape (4x smaller to keep); uint8 input is returned as is."""
    if x.dtype == torch.uint8:
        return x
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil(x: torch.Tensor):
    """One image (3, H, W), float in [-1, 1] or uint8 -> PIL RGB image."""
    from PIL import Image

    return Image.fromarray(to_uint8(x).permute(1, 2, 0).numpy())


def save_png(image, path: Path) -> Path:
    """Save a PIL image as PNG atomically."""
    from iclevr.fileio import atomic_path

    with atomic_path(Path(path)) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def save_grid(x: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """Save images (B, 3, H, W) (float in [-1, 1] or uint8) as one PNG grid (nrow per row, black padding, atomic)."""
    from torchvision.utils import make_grid

    grid = make_grid(to_uint8(x), nrow=nrow, padding=2, pad_value=0)  # (3, H', W') uint8
    return save_png(to_pil(grid), path)


def save_images(x: torch.Tensor, folder: Path, first: int = 0) -> list[Path]:
    """Save each image of (B, 3, H, W) as folder/<first>.png, <first + 1>.png, ... (numbered in order)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [save_png(to_pil(img), folder / f"{first + i}.png") for i, img in enumerate(x)]


# ---- the `iclevr sample` command's core -------------------------------------------------------------

class SampleSettings(BaseModel):
    """Settings of `iclevr sample`."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Path | None = Field(None, description="Run folder or .safetensors weights; empty = newest run.")
    labels: list[list[str]] | None = Field(None, description="Conditions to draw (lists of label names).")
    labels_file: Path | None = Field(None, description="JSON file holding a list of conditions, like test.json.")
    num: int = Field(1, ge=1, le=10000, description="Images per condition.")
    sampler: SamplerSettings = Field(default_factory=SamplerSettings, description="Sampler; unset fields "
                                     "(sampler, steps, guidance_scale) come from the weights' metadata.")
    out: Path = Field(Path("samples.png"), description="Grid PNG (8 images per row).")
    save_individual: bool = Field(False, description="Also write one PNG per image into a folder next to "
                                  "the grid (named after it).")


def with_weights_defaults(sampler: SamplerSettings, stored: SamplerSettings) -> SamplerSettings:
    """Fill the sampler, steps and guidance scale the user left unset from the weights' stored settings."""
    chosen = sampler.model_fields_set
    update = {}
    if "sampler" not in chosen:
        update["sampler"] = stored.sampler
    if "guidance_scale" not in chosen:
        update["guidance_scale"] = stored.guidance_scale
    name = update.get("sampler", sampler.sampler)
    if "steps" not in chosen and name == stored.sampler:
        update["steps"] = stored.steps
    merged = sampler.model_copy(update=update)
    check_sampler(merged.sampler)
    return merged


def load_conditions(path: Path) -> list[list[str]]:
    """Read a JSON list of conditions (lists of label names, like test.json) with clear errors."""
    from iclevr.data.course import read_json
    from iclevr.labels import LABELS, parse_names

    raw = read_json(Path(path), "labels file")
    if not isinstance(raw, list) or not raw or not all(isinstance(c, list) for c in raw):
        raise UserError(f"{path} must hold a non-empty JSON list of conditions, e.g. "
                        '[["red sphere", "cyan cube"], ["gray cylinder"]]')
    conditions = []
    for i, cond in enumerate(raw):
        if not all(isinstance(n, str) for n in cond):
            raise UserError(f"{path} condition {i}: every label must be a string")
        try:
            conditions.append([LABELS[k] for k in parse_names(cond)])
        except UserError as e:
            raise UserError(f"{path} condition {i}: {e}") from None
    return conditions


def load_model(checkpoint: Path | None, device: str = "auto"):
    """Resolve and load weights for sampling: returns (model, WeightsInfo, torch.device)."""
    from iclevr.weights import load_weights, resolve_checkpoint
    from iclevr.device import pick_device

    path = resolve_checkpoint(checkpoint)
    dev = pick_device(device)
    model, info = load_weights(path, dev)
    return model, info, dev


def run_sample(settings: SampleSettings, console=None) -> dict:
    """Load weights, draw `num` images per condition batch by batch, write the grid (and each batch's PNGs as it
    is drawn); returns a summary dict."""
    from iclevr.fileio import check_writable
    from iclevr.labels import encode_many

    if settings.labels and settings.labels_file:
        raise UserError("--labels and --labels-file conflict: give one of them")
    if settings.labels_file:
        conditions = load_conditions(settings.labels_file)
    elif settings.labels:
        conditions = settings.labels
    else:
        raise UserError('name what to draw: --labels "red sphere,cyan cube" or --labels-file test.json')
    y = encode_many(conditions).repeat_interleave(settings.num, dim=0)  # (N * num, 24)
    check_writable(settings.out.parent)
    model, info, device = load_model(settings.checkpoint, settings.sampler.device)
    sampler = with_weights_defaults(settings.sampler, info.sampler)
    folder = settings.out.with_suffix("") if settings.save_individual else None
    kept = torch.empty((len(y), 3, OUTPUT_SIZE, OUTPUT_SIZE), dtype=torch.uint8)  # all the grid needs, one block
    seconds, began = 0.0, time.perf_counter()
    for start, x0 in sample_batches(model, y, schedule=info.schedule, sampler=sampler, device=device):
        seconds += time.perf_counter() - began  # sampling time only, not PNG writing
        kept[start:start + len(x0)] = to_uint8(to_output_size(x0))  # (b, 3, 64, 64)
        if folder is not None:
            save_images(kept[start:start + len(x0)], folder, first=start)  # each batch's PNGs as it is drawn
        began = time.perf_counter()
    grid = save_grid(kept, settings.out)
    return {"grid": grid, "folder": folder, "images": len(y), "seconds": seconds, "checkpoint": info.path,
            "sampler": sampler.sampler, "steps": resolve_steps(sampler, info.schedule),
            "guidance_scale": sampler.guidance_scale, "device": str(device)}
