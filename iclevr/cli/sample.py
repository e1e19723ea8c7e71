"""`iclevr sample` and `iclevr denoise-trace`: draw images from trained weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from iclevr.cli.common import (
    CheckpointOpt,
    ConfigOpt,
    DeviceOpt,
    GuidanceOpt,
    PrintConfigOpt,
    SamplerOpt,
    SeedOpt,
    StepsOpt,
    command,
    console,
    print_settings,
    typed_overrides,
)

LabelsOpt = Annotated[
    Optional[str], typer.Option("--labels", help='One condition: "red sphere,cyan cube" (or a JSON list of names).')
]
# The sampler flags both commands share: parameter name -> settings key.
SAMPLER_FLAGS = {
    "sampler": "sampler.sampler",
    "steps": "sampler.steps",
    "guidance_scale": "sampler.guidance_scale",
    "seed": "sampler.seed",
    "device": "sampler.device",
}


def _condition(text: str) -> list[str]:
    """Parse --labels into canonical label names (clear error for unknown names)."""
    from iclevr.labels import LABELS, parse_condition

    return [LABELS[i] for i in parse_condition(text)]


def _finish(settings, print_config: bool) -> bool:
    """Apply the weights' sampler defaults for --print-config; True when the command should stop here."""
    if not print_config:
        return False
    from iclevr.generate import with_weights_defaults
    from iclevr.weights import read_info, resolve_checkpoint

    info = read_info(resolve_checkpoint(settings.checkpoint))
    settings.sampler = with_weights_defaults(settings.sampler, info.sampler)
    print_settings(settings)
    return True


@command
def sample_cmd(
    ctx: typer.Context,
    checkpoint: CheckpointOpt = None,
    labels: LabelsOpt = None,
    labels_file: Annotated[
        Optional[Path], typer.Option("--labels-file", help="JSON list of conditions, like test.json.")
    ] = None,
    num: Annotated[Optional[int], typer.Option("--num", help="Images per condition.")] = None,
    sampler: SamplerOpt = None,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    seed: SeedOpt = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per UNet batch.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Grid PNG (8 per row).")] = None,
    save_individual: Annotated[
        bool,
        typer.Option(
            "--save-individual/--no-save-individual", help="Also one PNG per image, in a folder named after the grid."
        ),
    ] = False,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Draw images for conditions (--labels or --labels-file) and save them as a PNG grid."""
    from iclevr.generate import SampleSettings, run_sample
    from iclevr.settings import resolve

    overrides = typed_overrides(
        ctx,
        {
            "checkpoint": "checkpoint",
            "labels": ("labels", lambda text: [_condition(text)]),
            "labels_file": "labels_file",
            "num": "num",
            "batch_size": "sampler.batch_size",
            "out": "out",
            "save_individual": "save_individual",
            **SAMPLER_FLAGS,
        },
    )
    settings = resolve(SampleSettings, config=config, overrides=overrides)
    if _finish(settings, print_config):
        return
    r = run_sample(settings, console)
    console.print(
        f"{r['images']} image(s) from {r['checkpoint']} with {r['sampler']} ({r['steps']} steps, "
        f"guidance {r['guidance_scale']:g}) on {r['device']} in {r['seconds']:.1f} s "
        f"({r['images'] / max(r['seconds'], 1e-9):.2f} images/s)"
    )
    console.print(
        f"grid: {r['grid']}" + (f"\nimages: {r['folder']}/0.png ... {r['images'] - 1}.png" if r["folder"] else "")
    )


@command
def denoise_trace_cmd(
    ctx: typer.Context,
    checkpoint: CheckpointOpt = None,
    labels: LabelsOpt = None,
    frames: Annotated[
        Optional[int], typer.Option("--frames", help="Frames from noise to image (>= 2; the course asks for >= 8).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Trace PNG.")] = None,
    x0_row: Annotated[bool, typer.Option("--x0-row/--no-x0-row", help="Add a row of predicted x0.")] = False,
    gif: Annotated[bool, typer.Option("--gif/--no-gif", help="Also write an animated GIF beside the PNG.")] = False,
    sampler: SamplerOpt = None,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Show one image being denoised: a row of frames from pure noise to the final image."""
    from iclevr.settings import resolve
    from iclevr.trace import TraceSettings, run_trace

    overrides = typed_overrides(
        ctx,
        {
            "checkpoint": "checkpoint",
            "labels": ("labels", _condition),
            "frames": "frames",
            "out": "out",
            "x0_row": "x0_row",
            "gif": "gif",
            **SAMPLER_FLAGS,
        },
    )
    settings = resolve(TraceSettings, config=config, overrides=overrides)
    if _finish(settings, print_config):
        return
    r = run_trace(settings, console)
    console.print(
        f"{r['frames']} frames (t = {', '.join(str(t) for t in r['timesteps'][:-1])}, final) "
        f"with {r['sampler']} ({r['steps']} steps, guidance {r['guidance_scale']:g}) "
        f"in {r['seconds']:.1f} s"
    )
    console.print(f"trace: {r['png']}" + (f"\nanimation: {r['gif']}" if r["gif"] else ""))
