"""`iclevr export`: write a folder plain diffusers can load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from iclevr.cli.common import command, console, typed_overrides
from iclevr.cli.common import CheckpointOpt


@command
def export_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Folder to write (unet/, scheduler/, label embedding).")],
    checkpoint: CheckpointOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Replace files in an existing "
                                            "folder.")] = False,
) -> None:
    """Export trained weights as a diffusers UNet2DModel + scheduler + label embedding folder."""
    from iclevr.export import ExportSettings, export
    from iclevr.settings import resolve

    overrides = typed_overrides(ctx, {"checkpoint": "checkpoint", "out": "out", "overwrite": "overwrite"})
    settings = resolve(ExportSettings, overrides=overrides)
    folder = export(settings)
    console.print(f"exported to {folder}  (UNet2DModel.from_pretrained('{folder}', subfolder='unet'); "
                  f"snippet in {folder / 'README.md'})")
