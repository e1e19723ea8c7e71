"""Settings: pydantic sections composed into one model per command.

Values are resolved as defaults < preset < config file (JSON or TOML) < command-line flags, and the
resolved settings are written into every run folder (`settings.json`). Overrides name only what was given:
None is a value like any other (a config file's null, a flag's `none`); a key that is absent, or whose
value is `UNSET`, leaves the setting to the layers below.
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from iclevr.errors import UserError, format_validation_error


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, values are validated on assignment, and no number
    is inf or nan (an infinite --lr would train to NaN weights)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataSettings(Section):
    """Where the course-layout data lives and how it is loaded."""

    data_dir: Path | None = Field(
        None,
        description="Course data folder (train.json, objects.json, test.json, "
        "new_test.json, iclevr/*.png); empty = the embedded rendered kit.",
    )
    images_dir: Path | None = Field(None, description="Folder of the training PNGs; empty = <data_dir>/iclevr.")
    cache: bool = Field(True, description="Decode the training set once into a uint8 tensor cached on disk.")
    flip: bool = Field(False, description="Random horizontal flip augmentation (never changes which objects).")


class ModelSettings(Section):
    """The conditional UNet (diffusers UNet2DModel, or UNet2DConditionModel for tokens) and its label embedding."""

    design: Literal["pixels", "patch2", "latent"] = Field(
        "pixels",
        description="What the UNet denoises (docs/designs.md): pixels = RGB images at sample_size "
        "(resized to 64x64 when that is lower); patch2 = RGB images at 2 x sample_size, entering the UNet as 2x2 "
        "patches (pixel-unshuffle in, pixel-shuffle out; Hoogeboom et al. 2023); latent = the latents of an "
        "autoencoder at sample_size, decoded to its resolution (Rombach et al. 2022).",
    )
    sample_size: int = Field(
        64,
        gt=0,
        description="Resolution the UNet runs at (pixels: the image; patch2: half the image; latent: the latent grid).",
    )
    latent_channels: int = Field(4, gt=0, description="latent only: channels of the autoencoder's latents.")
    autoencoder_sha256: str | None = Field(
        None,
        description="latent only: SHA-256 of the autoencoder file the "
        "model was trained with (set by `iclevr train`; sampling refuses any "
        "other autoencoder).",
    )
    block_out_channels: tuple[int, ...] = Field(
        (128, 128, 256, 256, 512, 512), description="Channels per UNet resolution level."
    )
    layers_per_block: int = Field(2, ge=1, description="ResNet layers per UNet block.")
    down_block_types: tuple[str, ...] = Field(
        ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"), description="diffusers down block types."
    )
    up_block_types: tuple[str, ...] = Field(
        ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4, description="diffusers up block types."
    )
    attention_head_dim: int = Field(8, gt=0, description="Channels per attention head.")
    norm_num_groups: int = Field(32, gt=0, description="GroupNorm groups (must divide every channel count).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the ResNet blocks.")
    resnet_time_scale_shift: Literal["default", "scale_shift"] = Field(
        "default",
        description="How the time+label embedding enters each ResNet block: added to the features "
        "(default) or as a GroupNorm scale and shift (scale_shift, AdaGN of Dhariwal & Nichol 2021).",
    )
    condition: Literal["pooled", "tokens"] = Field(
        "pooled",
        description="How the labels reach the UNet: one pooled vector on the time path (pooled), or "
        "also one token per requested object that the CrossAttn blocks attend to (tokens; docs/conditioning.md).",
    )
    token_embedding: Literal["class", "shape_colour"] = Field(
        "class",
        description="tokens only: an object's token is a learned embedding of its class (class) or "
        "the sum of a shape and a colour embedding (shape_colour).",
    )
    label_on_time_path: bool = Field(
        True,
        description="Add the pooled label vector (Linear(24 -> time embedding)) to the time embedding. "
        "pooled needs it; tokens can leave it out, so the labels reach the UNet through the object tokens alone.",
    )
    cross_attention_dim: int | None = Field(
        None, gt=0, description="tokens only: width of the object tokens; empty = the widest UNet level."
    )
    self_condition: bool = Field(
        False,
        description='Self-conditioning (Chen, Zhang & Hinton 2022, "Analog Bits"): the UNet also takes '
        "an estimate of x0 as 3 more input channels, its own previous prediction when sampling (zeros at the "
        "first step) and, for half of the training batches, its own prediction from a first pass without it.",
    )


class ScheduleSettings(Section):
    """The training noise schedule (see iclevr.schedules for the registry)."""

    name: str = Field(
        "squaredcos_cap_v2", description="Noise schedule: linear, scaled_linear, sigmoid, squaredcos_cap_v2 or cosine."
    )
    num_train_timesteps: int = Field(1000, gt=1, description="Number of diffusion timesteps T.")
    prediction_type: Literal["epsilon", "v_prediction"] = Field("epsilon", description="What the UNet predicts.")
    shift: float = Field(
        1.0,
        gt=0,
        description="Resolution shift of the schedule (Hoogeboom et al. 2023, "
        '"simple diffusion", section 3.1): log SNR(t) - 2 log(shift); 2 = the schedule of a '
        "32x32 model moved to 64x64 images, so each step destroys as much of the scene at 64 "
        "as it did at 32.",
    )


class SamplerSettings(Section):
    """How images are drawn from a trained model."""

    sampler: str = Field(
        "dpmpp-sde",
        description="Sampler: ddpm, ddim, dpmpp, dpmpp-sde or unipc "
        "(docs/performance.md, 'Sampling speed and accuracy', compares them).",
    )
    steps: int | None = Field(None, gt=0, description="Sampling steps; empty = the sampler's default.")
    guidance_scale: float = Field(
        2.0,
        ge=0.0,
        le=50.0,
        description="Classifier-free guidance scale s "
        "(eps = eps_uncond + s * (eps_cond - eps_uncond)); 1 = conditional only.",
    )
    batch_size: int = Field(64, gt=0, description="Images per UNet batch (each image has its own generator).")
    seed: int = Field(0, ge=0, description="Base seed; image i uses generator seed (seed, i).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    clip_x0: bool = Field(
        True,
        description="Clip the predicted x0 to [-1, 1] at every step, for every sampler "
        "(pixel designs only: latents are not bounded) "
        "(DDPM's clip_sample; keeps multistep solvers stable at the cosine schedule's t=999).",
    )


class TrainLoopSettings(Section):
    """Optimisation, mixed precision, EMA and bookkeeping of the training loop."""

    epochs: int | None = Field(None, gt=0, description="Epochs to train (one epoch = one pass over train.json).")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps to train; wins over epochs.")
    max_minutes: float | None = Field(None, gt=0, description="Wall-clock budget in minutes (stops cleanly).")
    batch_size: int = Field(32, gt=0, description="Images per optimizer step (per process, before accumulation).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate.")
    optimizer: Literal["adam", "adamw"] = Field("adam", description="Adam (the seed's) or AdamW.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (AdamW).")
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine",
        description="LR over the run's progress (steps "
        "of a step budget, else elapsed time of a time budget): "
        "cosine annealing to 0, or constant.",
    )
    warmup_steps: int = Field(0, ge=0, description="Linear LR warm-up steps (a ramp that multiplies the schedule).")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this; empty = no clipping.")
    p_uncond: float = Field(0.2, ge=0, le=1, description="Probability of dropping the condition (CFG training).")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="Maximum EMA decay of the sampling weights.")
    ema_warmup: bool = Field(True, description="Warm the EMA decay up as min(decay, (1+step)/(10+step)).")
    snr_gamma: float | None = Field(
        None, gt=0, description="Min-SNR-gamma loss weighting (Hang et al. 2023); empty = plain MSE."
    )
    immiscible: bool = Field(
        False,
        description='Immiscible diffusion (Li et al. 2024, "Immiscible Diffusion"): '
        "re-pair each batch's noise samples with its images by a least-total-L2-distance "
        "assignment (scipy linear_sum_assignment) before noising; the target is the "
        "re-paired noise.",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="Autocast precision.")
    seed: int = Field(0, ge=0, description="Seed of weights, data order and noise (reseeded per step).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    data_on_device: bool = Field(True, description="Move the cached uint8 training tensor to the device once.")
    compile: bool = Field(False, description="torch.compile the UNet.")
    channels_last: bool = Field(False, description="Use channels_last memory format.")
    log_every: int = Field(25, gt=0, description="Steps between loss logs (the only host sync).")
    sample_every: int = Field(0, ge=0, description="Epochs between sample grids from fixed noise; 0 = at the end.")
    sample_grids: Literal["fast", "run", "off"] = Field(
        "fast",
        description="Sample grids during training: fast = drawn with the default sampler at its default "
        "steps; run = with this run's [sampler] settings; off = no grids at all.",
    )
    checkpoint_every: int = Field(1, ge=0, description="Epochs between resumable states; 0 = at the end only.")
    checkpoint_every_steps: int = Field(0, ge=0, description="Also save a state every N steps; 0 = off.")
    keep_states: int = Field(2, ge=1, description="Resumable training states kept (oldest deleted).")


class TrainSettings(Section):
    """Settings of `iclevr train`."""

    preset: str = Field("seed", description="Preset these settings started from.")
    data: DataSettings = Field(default_factory=DataSettings, description="Training data.")
    model: ModelSettings = Field(default_factory=ModelSettings, description="The UNet.")
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings, description="Noise schedule.")
    train: TrainLoopSettings = Field(default_factory=TrainLoopSettings, description="Training loop.")
    sampler: SamplerSettings = Field(
        default_factory=SamplerSettings,
        description="Sampler stored with the "
        "weights (what `iclevr sample` uses unless told otherwise); sample grids use "
        "it with train.sample_grids = run.",
    )
    out: Path | None = Field(None, description="Run folder; empty = checkpoints/<preset>-<schedule>-s<seed>.")
    autoencoder: str | None = Field(
        None,
        description="model.design = latent: the autoencoder file or its run "
        "folder (`iclevr autoencoder train`); empty = the packaged one, which a "
        "course kit (--data-dir) refuses: train one on that kit.",
    )
    init_from: str | None = Field(
        None,
        description="Start from existing weights (a .safetensors file, a run "
        "folder, or 'packaged') of the same architecture; the optimizer starts fresh.",
    )


PRESETS: tuple[str, ...] = ("seed", "small", "small-tokens", "tiny", "tiny-tokens", "tiny-latent", "tiny-patch")
CPU_PRESETS: tuple[str, ...] = ("tiny", "tiny-tokens", "tiny-latent", "tiny-patch")  # sized for a 2-core CPU
# what `iclevr train`, `iclevr demo` and compare-schedules use without a GPU: native 64x64 through the packaged
# autoencoder, the val winner at equal CPU time (docs/designs.md)
CPU_PRESET = "tiny-latent"


class _Unset:
    """The type of UNSET: an override that was not given (unlike None, which sets a setting to None)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # compared by identity: `value is UNSET`


def deep_merge(base: dict, update: dict) -> dict:
    """Return `base` updated recursively by `update` (neither is modified)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    """{'train.lr': 1e-4, 'out': None} -> {'train': {'lr': 1e-4}, 'out': None}; UNSET values are dropped."""
    nested: dict = {}
    for key, value in flat.items():
        if value is UNSET:
            continue
        for part in reversed(key.split(".")):
            value = {part: value}
        nested = deep_merge(nested, value)  # never writes into a dict the caller passed in
    return nested


def load_preset(name: str) -> dict:
    """The settings dict of a named preset (iclevr/presets/<name>.toml)."""
    if name not in PRESETS:
        raise UserError(f'unknown preset "{name}"; valid: {", ".join(PRESETS)}')
    text = resources.files("iclevr").joinpath("presets", f"{name}.toml").read_text()
    return tomllib.loads(text)


def read_config(path: Path) -> dict:
    """Read a JSON or TOML settings file into a dict, with a clear error if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a table/object of settings")
    return data


def resolve(
    cls: type[BaseModel],
    *,
    preset: str | None = None,
    config: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> BaseModel:
    """Build settings `cls` from defaults < preset < config file < overrides (dotted keys; None is a value)."""
    file_values = read_config(config) if config else {}
    preset = preset or file_values.get("preset")
    merged: dict = {}
    if preset:
        fields = set(cls.model_fields)
        merged = {k: v for k, v in load_preset(preset).items() if k in fields}
        if "preset" in fields:
            merged["preset"] = preset
    merged = deep_merge(merged, file_values)
    merged = deep_merge(merged, unflatten(overrides or {}))
    try:
        return cls.model_validate(merged)
    except ValidationError as e:
        raise UserError(format_validation_error(e)) from None


def to_json(settings: BaseModel) -> str:
    """Resolved settings as indented JSON text."""
    return settings.model_dump_json(indent=2)


def write_settings(settings: BaseModel, folder: Path, name: str = "settings.json") -> Path:
    """Write resolved settings into `folder/name` (atomically) and return the path."""
    from iclevr.fileio import atomic_write_text

    path = Path(folder) / name
    atomic_write_text(path, to_json(settings) + "\n")
    return path
