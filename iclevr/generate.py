"""The core of `iclevr sample`: trained weights and conditions in, a PNG grid (and one PNG per image) out.

Also the two steps every command that draws from trained weights shares (sample, denoise-trace, eval):
loading the model --checkpoint resolves to (iclevr.weights.resolve_model), and filling the sampler settings
the user left unset from the weights' metadata.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from iclevr.errors import UserError
from iclevr.settings import SamplerSettings


class SampleSettings(BaseModel):
    """Settings of `iclevr sample`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    checkpoint: Path | None = Field(
        None,
        description="Run folder or .safetensors weights; empty = the "
        "newest finished run, else the packaged pretrained model.",
    )
    labels: list[list[str]] | None = Field(None, description="Conditions to draw (lists of label names).")
    labels_file: Path | None = Field(None, description="JSON file holding a list of conditions, like test.json.")
    num: int = Field(1, ge=1, le=10000, description="Images per condition.")
    sampler: SamplerSettings = Field(
        default_factory=SamplerSettings,
        description="Sampler; unset fields (sampler, steps, guidance_scale) come from the weights' metadata.",
    )
    out: Path = Field(Path("samples.png"), description="Grid PNG (8 images per row).")
    save_individual: bool = Field(
        False, description="Also write one PNG per image into a folder next to the grid (named after it)."
    )


def with_weights_defaults(sampler: SamplerSettings, stored: SamplerSettings) -> SamplerSettings:
    """Fill the sampler, steps and guidance scale the user left unset from the weights' stored settings."""
    from iclevr.sampling import check_sampler

    chosen = sampler.model_fields_set
    update = {}
    if "sampler" not in chosen:
        update["sampler"] = stored.sampler
    if "guidance_scale" not in chosen:
        update["guidance_scale"] = stored.guidance_scale
    name = update.get("sampler", sampler.sampler)
    # stored steps belong to the stored sampler: another sampler keeps its own default
    if "steps" not in chosen and name == stored.sampler:
        update["steps"] = stored.steps
    merged = sampler.model_copy(update=update)
    check_sampler(merged.sampler)
    return merged


def read_label_file(path: Path) -> list[list[str]]:
    """Read a JSON list of conditions (lists of label names, like test.json) with clear errors."""
    from iclevr.fileio import read_json
    from iclevr.labels import LABELS, parse_names

    raw = read_json(Path(path), "labels file")
    if not isinstance(raw, list) or not raw or not all(isinstance(c, list) for c in raw):
        raise UserError(
            f"{path} must hold a non-empty JSON list of conditions, e.g. "
            '[["red sphere", "cyan cube"], ["gray cylinder"]]'
        )
    conditions = []
    for i, cond in enumerate(raw):
        if not all(isinstance(n, str) for n in cond):
            raise UserError(f"{path} condition {i}: every label must be a string")
        try:
            conditions.append([LABELS[k] for k in parse_names(cond)])
        except UserError as e:
            raise UserError(f"{path} condition {i}: {e}") from None
    return conditions


def load_model(checkpoint: Path | None, device: str = "auto", console=None):
    """Resolve and load weights for sampling (printing the line that names them on `console`): returns
    (model, WeightsInfo, torch.device)."""
    from iclevr.device import pick_device
    from iclevr.weights import load_weights, model_line, resolve_model

    source = resolve_model(checkpoint)
    dev = pick_device(device)
    model, info = load_weights(source.path, dev)
    if console is not None:
        console.print(model_line(source, info), markup=False, highlight=False, soft_wrap=True)
    return model, info, dev


def _conditions(settings: SampleSettings) -> list[list[str]]:
    """The conditions to draw: --labels or --labels-file, exactly one of them."""
    if settings.labels and settings.labels_file:
        raise UserError("--labels and --labels-file conflict: give one of them")
    if settings.labels_file:
        return read_label_file(settings.labels_file)
    if settings.labels:
        return settings.labels
    raise UserError('name what to draw: --labels "red sphere,cyan cube" or --labels-file test.json')


def warn_crowded(conditions: list[list[str]], console=None) -> None:
    """Print the one warning line of labels.crowded_warning on `console` when a condition has too many objects."""
    from iclevr.labels import crowded_warning

    line = crowded_warning(conditions)
    if line and console is not None:
        console.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)


def run_sample(settings: SampleSettings, console=None) -> dict:
    """Load weights, draw `num` images per condition batch by batch, write the grid (and each batch's PNGs as it
    is drawn); returns a summary dict."""
    from iclevr.fileio import check_output_file
    from iclevr.images import OUTPUT_SIZE, save_grid, save_images, to_output_size, to_uint8
    from iclevr.labels import encode_many
    from iclevr.sampling import resolve_steps, sample_batches

    conditions = _conditions(settings)
    warn_crowded(conditions, console)
    y = encode_many(conditions).repeat_interleave(settings.num, dim=0)  # (N * num, 24)
    check_output_file(settings.out, "samples.png")
    model, info, device = load_model(settings.checkpoint, settings.sampler.device, console)
    sampler = with_weights_defaults(settings.sampler, info.sampler)
    folder = settings.out.with_suffix("") if settings.save_individual else None
    kept = torch.empty((len(y), 3, OUTPUT_SIZE, OUTPUT_SIZE), dtype=torch.uint8)  # all the grid needs, one block
    seconds, began = 0.0, time.perf_counter()
    for start, x0 in sample_batches(model, y, schedule=info.schedule, sampler=sampler, device=device):
        seconds += time.perf_counter() - began  # sampling time only, not PNG writing
        kept[start : start + len(x0)] = to_uint8(to_output_size(x0))  # (b, 3, 64, 64)
        if folder is not None:
            save_images(kept[start : start + len(x0)], folder, first=start)  # each batch's PNGs as it is drawn
        began = time.perf_counter()
    grid = save_grid(kept, settings.out)
    return {
        "grid": grid,
        "folder": folder,
        "images": len(y),
        "seconds": seconds,
        "checkpoint": info.path,
        "sampler": sampler.sampler,
        "steps": resolve_steps(sampler, info.schedule),
        "guidance_scale": sampler.guidance_scale,
        "device": str(device),
    }
