"""`iclevr data check` (and the data sub-commands added by the renderer: synth, preview)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from iclevr.cli import command, console, data_app
from iclevr.cli.common import DataDirOpt


@data_app.command("check")
@command
def check(
    data_dir: DataDirOpt = None,
    images_dir: Annotated[Optional[Path], typer.Option("--images-dir", help="Training PNG folder "
                                                       "(default <data-dir>/iclevr).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Only open image headers instead of decoding.")] = False,
) -> None:
    """Validate a course data folder and summarise it; exit code 2 if it is unusable."""
    from iclevr.data.course import check_images, load_kit, resolve_data_dir, summarise
    from iclevr.data.report import print_check_report

    kit = load_kit(resolve_data_dir(data_dir, console), images_dir)
    missing, corrupt = check_images(kit, verify=not quick)
    ok = print_check_report(console, kit, summarise(kit), missing, corrupt)
    if not ok:
        raise typer.Exit(2)
