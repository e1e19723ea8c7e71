"""The denoising trace: frames from pure noise x_T to the final image, recorded by a callback of
iclevr.sampling.sample (no second sampling loop).

A run of N steps passes through N + 1 states: state k < N is x_t at step k (state 0 is the initial noise
x_T) and state N is the final image. The figure shows `frames` states chosen evenly over 0..N, optionally
with a second row of the predicted x0 at the same steps, and an animated GIF.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from iclevr.errors import UserError
from iclevr.labels import TRACE_LABELS
from iclevr.settings import SamplerSettings

GIF_FRAMES = 40  # states shown in the animation (the final image is held longer)
CAPTION_H = 14  # pixels of the caption strip above each column


def frame_states(frames: int, steps: int) -> list[int]:
    """`frames` state indices spread evenly over 0..steps (0 = x_T, steps = final image), no repeats."""
    if frames < 2:
        raise UserError(f"--frames must be at least 2 (noise and final image), got {frames}")
    if frames > steps + 1:
        raise UserError(
            f"--frames {frames} needs at least {frames - 1} sampling steps (got {steps}); "
            "lower --frames or raise --steps"
        )
    return [round(k * steps / (frames - 1)) for k in range(frames)]


@dataclass
class TraceRecorder:
    """sample() callback keeping x_t and the predicted x0 (image 0 of the batch) at the chosen states."""

    keep: set[int]
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None  # latent models: (1, C, h, w) -> (1, 3, H, W)
    x_t: dict[int, torch.Tensor] = field(default_factory=dict)  # state -> (3, H, W) on the CPU
    x0_pred: dict[int, torch.Tensor] = field(default_factory=dict)
    t: dict[int, int] = field(default_factory=dict)

    def __call__(self, step: dict) -> None:
        """Record the states of this step that were asked for (only image 0 of the first chunk)."""
        if step["start"] != 0:
            return
        i, last = step["i"], step["steps"] - 1
        if i in self.keep:
            self.x_t[i] = self._image(step["x_t"])
            self.x0_pred[i] = self._image(step["x0_pred"]).clamp(-1, 1)
            self.t[i] = step["t"]
        if i == last and last + 1 in self.keep:
            final = self._image(step["x_prev"]).clamp(-1, 1)
            self.x_t[last + 1], self.x0_pred[last + 1], self.t[last + 1] = final, final, -1

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        """Image 0 of a step's batch as RGB (3, H, W) on the CPU (a latent decoded by the autoencoder)."""
        x = x[:1].float()
        return (self.decode(x) if self.decode is not None else x)[0].float().cpu()

    def stack(self, states: list[int], which: str = "x_t") -> torch.Tensor:
        """The recorded images of `states` as (F, 3, S, S)."""
        source = self.x_t if which == "x_t" else self.x0_pred
        return torch.stack([source[k] for k in states])


@dataclass
class Trace:
    """A recorded denoising trace: the figure's frames and the animation's states."""

    states: list[int]
    timesteps: list[int]  # -1 marks the final image
    x_t: torch.Tensor  # (F, 3, S, S) in model range (x_T is unclipped noise)
    x0_pred: torch.Tensor  # (F, 3, S, S)
    final: torch.Tensor  # (1, 3, S, S), what sample() returned
    gif_x_t: torch.Tensor | None = None
    gif_x0_pred: torch.Tensor | None = None


def step_decoder(model) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What turns a sampling state of `model` into images: the autoencoder's decoder for a latent model
    ((B, C, h, w) -> (B, 3, H, W)), None for a pixel model (its states are images already)."""
    return model.to_images if getattr(getattr(model, "cfg", None), "design", "pixels") == "latent" else None


def record_trace(
    model, y: torch.Tensor, *, schedule, sampler: SamplerSettings, frames: int = 10, gif: bool = False, device=None
) -> Trace:
    """Sample one image for y (1, 24) and record `frames` evenly spaced states via sample()'s callback."""
    from iclevr.sampling import resolve_steps, sample

    steps = resolve_steps(sampler, schedule)
    states = frame_states(frames, steps)
    gif_states = frame_states(min(GIF_FRAMES, steps + 1), steps) if gif else []
    recorder = TraceRecorder(keep=set(states) | set(gif_states), decode=step_decoder(model))
    final = sample(model, y[:1], schedule=schedule, sampler=sampler, callback=recorder, device=device)
    trace = Trace(
        states=states,
        timesteps=[recorder.t[k] for k in states],
        x_t=recorder.stack(states),
        x0_pred=recorder.stack(states, "x0_pred"),
        final=final,
    )
    if gif:
        trace.gif_x_t, trace.gif_x0_pred = recorder.stack(gif_states), recorder.stack(gif_states, "x0_pred")
    return trace


def _caption(t: int) -> str:
    return "final" if t < 0 else f"t={t}"


def trace_figure(trace: Trace, x0_row: bool = False, size: int = 64):
    """The trace as a PIL image: a caption strip, a row of x_t frames and optionally a row of predicted x0."""
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.utils import make_grid

    from iclevr.images import to_output_size, to_pil

    rows = [to_output_size(trace.x_t.clamp(-1, 1), size)]
    if x0_row:
        rows.append(to_output_size(trace.x0_pred, size))
    n = len(trace.states)
    grid = to_pil(make_grid(torch.cat(rows), nrow=n, padding=2, pad_value=1.0))  # white gutters
    figure = Image.new("RGB", (grid.width, grid.height + CAPTION_H), "white")
    figure.paste(grid, (0, CAPTION_H))
    draw, font = ImageDraw.Draw(figure), ImageFont.load_default()
    for k, t in enumerate(trace.timesteps):
        text = _caption(t)
        w = draw.textlength(text, font=font)
        draw.text((2 + k * (size + 2) + (size - w) / 2, 2), text, fill="black", font=font)
    return figure


def gif_bytes(x_t: torch.Tensor, x0_pred: torch.Tensor | None = None, size: int = 64, ms: int = 80) -> bytes:
    """A looping GIF of states x_t (G, 3, S, S) in model range, with x0_pred (G, 3, S, S) beside them when
    given; the last frame (the final image) is held longer."""
    import io

    from iclevr.images import to_output_size, to_pil

    frames = to_output_size(x_t.float().clamp(-1, 1), size)  # (G, 3, 64, 64)
    if x0_pred is not None:
        frames = torch.cat([frames, to_output_size(x0_pred.float().clamp(-1, 1), size)], dim=-1)  # (G, 3, 64, 128)
    images = [to_pil(f).convert("P", palette=1, colors=256) for f in frames]  # 1 = adaptive palette
    durations = [ms] * (len(images) - 1) + [1500]  # hold the final image
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buf.getvalue()


def write_gif(trace: Trace, path: Path, x0_row: bool = False, size: int = 64, ms: int = 80) -> Path:
    """Write the animation (x_t, and predicted x0 beside it with x0_row) as a looping GIF, atomically."""
    from iclevr.fileio import atomic_write_bytes

    atomic_write_bytes(Path(path), gif_bytes(trace.gif_x_t, trace.gif_x0_pred if x0_row else None, size, ms))
    return Path(path)


class TraceSettings(BaseModel):
    """Settings of `iclevr denoise-trace`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    checkpoint: Path | None = Field(
        None,
        description="Run folder or .safetensors weights; empty = the "
        "newest finished run, else the packaged pretrained model.",
    )
    labels: list[str] = Field(list(TRACE_LABELS), min_length=1, description="The condition (label names).")
    frames: int = Field(10, ge=2, description="Frames in the row, from pure noise to the final image (course: >= 8).")
    x0_row: bool = Field(False, description="Add a second row with the predicted x0 at each frame.")
    gif: bool = Field(False, description="Also write an animated GIF next to the PNG.")
    sampler: SamplerSettings = Field(
        default_factory=SamplerSettings,
        description="Sampler; unset fields (sampler, steps, guidance_scale) come from the weights' metadata.",
    )
    out: Path = Field(Path("trace.png"), description="The trace PNG.")


def run_trace(settings: TraceSettings, console=None) -> dict:
    """Load weights, record the trace of one image and write the PNG (and GIF); returns a summary dict."""
    from iclevr.fileio import check_output_file
    from iclevr.generate import load_model, warn_crowded, with_weights_defaults
    from iclevr.images import save_png
    from iclevr.labels import encode
    from iclevr.sampling import resolve_steps

    warn_crowded([settings.labels], console)
    y = encode(settings.labels)[None]  # (1, 24)
    check_output_file(settings.out, "trace.png")
    model, info, device = load_model(settings.checkpoint, settings.sampler.device, console)
    sampler = with_weights_defaults(settings.sampler, info.sampler)
    frame_states(settings.frames, resolve_steps(sampler, info.schedule))  # fail before sampling
    began = time.perf_counter()
    trace = record_trace(
        model, y, schedule=info.schedule, sampler=sampler, frames=settings.frames, gif=settings.gif, device=device
    )
    seconds = time.perf_counter() - began
    png = save_png(trace_figure(trace, settings.x0_row), settings.out)
    gif = write_gif(trace, settings.out.with_suffix(".gif"), settings.x0_row) if settings.gif else None
    return {
        "png": png,
        "gif": gif,
        "frames": len(trace.states),
        "timesteps": trace.timesteps,
        "seconds": seconds,
        "checkpoint": info.path,
        "sampler": sampler.sampler,
        "steps": resolve_steps(sampler, info.schedule),
        "guidance_scale": sampler.guidance_scale,
    }
