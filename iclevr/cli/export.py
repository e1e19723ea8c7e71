"""`iclevr export`: write a folder plain diffusers can load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from iclevr.cli.common import CheckpointOpt, command, console, typed_overrides


@command
def export_cmd(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write (unet/, scheduler/, label embedding, object tokens).")
    ],
    checkpoint: CheckpointOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite/--no-overwrite", help="Replace files in an existing folder.")
    ] = False,
) -> None:
    """Export weights as a diffusers folder: UNet2DModel, or UNet2DConditionModel + object tokens (tokens)."""
    from iclevr.export import ExportSettings, export, unet_class
    from iclevr.settings import resolve
    from iclevr.weights import model_line, read_info, resolve_model

    overrides = typed_overrides(ctx, {"checkpoint": "checkpoint", "out": "out", "overwrite": "overwrite"})
    settings = resolve(ExportSettings, overrides=overrides)
    source = resolve_model(settings.checkpoint)
    info = read_info(source.path)
    console.print(model_line(source, info), markup=False, soft_wrap=True)
    folder = export(settings.model_copy(update={"checkpoint": source.path}))  # the weights just named
    console.print(
        f"exported to {folder}  ({unet_class(info)}.from_pretrained('{folder}', subfolder='unet'); "
        f"snippet in {folder / 'README.md'})"
    )
