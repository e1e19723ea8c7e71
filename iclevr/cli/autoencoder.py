"""`iclevr autoencoder train`: fit the latent design's autoencoder on a kit (iclevr.training.autoencoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from iclevr.cli.common import (
    ConfigOpt,
    DataDirOpt,
    DeviceOpt,
    PrintConfigOpt,
    SeedOpt,
    command,
    console,
    optional_float,
    optional_int,
    print_settings,
    resume_config,
    typed_overrides,
)

Opt = typer.Option
autoencoder_app = typer.Typer(help="The latent design's autoencoder (AutoencoderKL, f = 4).", no_args_is_help=True)


@autoencoder_app.command("train")
@command
def autoencoder_train_cmd(
    ctx: typer.Context,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
    data_dir: DataDirOpt = None,
    out: Annotated[Optional[Path], Opt(help="Run folder (default checkpoints/autoencoder-s<seed>).")] = None,
    resume: Annotated[Optional[Path], Opt(help="Continue the autoencoder run in this folder.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Start over in an existing run folder.")] = False,
    max_steps: Annotated[Optional[int], optional_int(help="Optimizer steps (wins over --max-minutes).")] = None,
    max_minutes: Annotated[Optional[float], optional_float(help="Wall-clock budget (default 30).")] = None,
    batch_size: Annotated[Optional[int], Opt(help="Images per step.")] = None,
    lr: Annotated[Optional[float], Opt(help="Peak learning rate.")] = None,
    heldout: Annotated[Optional[int], Opt(help="Training images held out for PSNR and KID.")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Train the AutoencoderKL of the latent design on a kit's training images (the embedded one by default).

    Writes RUN/autoencoder.safetensors (with its held-out PSNR and latent scale factor); train a latent model on
    it with `iclevr train --preset tiny-latent --autoencoder RUN`. Ctrl-C saves and exits 3 (--resume RUN).
    """
    from iclevr.settings import resolve
    from iclevr.training.autoencoder import AutoencoderTrainSettings, train_autoencoder

    config = resume_config(resume, out, config)
    overrides = typed_overrides(
        ctx,
        {
            "data_dir": "data.data_dir",
            "out": "out",
            "resume": "out",
            "max_steps": "max_steps",
            "max_minutes": "max_minutes",
            "batch_size": "batch_size",
            "lr": "lr",
            "heldout": "heldout",
            "seed": "seed",
            "device": "device",
        },
    )
    settings = resolve(AutoencoderTrainSettings, config=config, overrides=overrides)
    if print_config:
        return print_settings(settings)
    train_autoencoder(settings, console=console, resume=resume is not None, overwrite=overwrite)
