"""Option types shared by the commands (defined once, reused everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from iclevr.cli import console

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="JSON or TOML settings file "
                                                   "(defaults < preset < config < flags).")]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", "--dry-run",
                                              help="Print the resolved settings and exit.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Course data folder; "
                                                    "default: the embedded rendered kit.")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help="Settings preset: seed, small or tiny.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
CheckpointOpt = Annotated[Optional[Path], typer.Option("--checkpoint", help="Run folder (its EMA weights) or "
                                                       ".safetensors file; default: newest run under checkpoints/.")]
SamplerOpt = Annotated[Optional[str], typer.Option("--sampler", help="ddpm, ddim, dpmpp, dpmpp-sde or unipc.")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Sampling steps (default: the sampler's).")]
GuidanceOpt = Annotated[Optional[float], typer.Option("--guidance-scale", help="Classifier-free guidance scale.")]


def print_settings(settings: Any) -> None:
    """Print resolved settings as JSON (for --print-config / --dry-run)."""
    from iclevr.settings import to_json

    console.print_json(to_json(settings))
