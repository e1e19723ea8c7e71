"""`iclevr data check|synth|preview`: check, render and preview course-layout data."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from iclevr.cli.common import (
    ConfigOpt,
    DataDirOpt,
    PrintConfigOpt,
    SeedOpt,
    command,
    console,
    optional_int,
    print_settings,
    typed_overrides,
)

data_app = typer.Typer(help="Check, render and preview course-layout data.", no_args_is_help=True)


@data_app.command("check")
@command
def check(
    data_dir: DataDirOpt = None,
    images_dir: Annotated[
        Optional[Path], typer.Option("--images-dir", help="Training PNG folder (default <data-dir>/iclevr).")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Only open image headers instead of decoding.")] = False,
) -> None:
    """Validate a course data folder and summarise it; exit code 2 if it is unusable."""
    from iclevr.data.course import check_images, load_kit, summarise
    from iclevr.data.kits import resolve_data_dir
    from iclevr.data.report import print_check_report
    from iclevr.evaluation.evaluator import COURSE_FILE, choose_evaluator_file

    kit = load_kit(resolve_data_dir(data_dir, console), images_dir)
    missing, corrupt = check_images(kit, verify=not quick)
    evaluator = choose_evaluator_file(None, kit.data_dir)  # what `iclevr eval --data-dir` would use
    course = evaluator if evaluator == kit.data_dir / COURSE_FILE else None
    ok = print_check_report(console, kit, summarise(kit), missing, corrupt, course)
    if not ok:
        raise typer.Exit(2)


@data_app.command("synth")
@command
def synth(
    ctx: typer.Context,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="Output folder (default: the embedded default kit under $ICLEVR_HOME/kits)."),
    ] = None,
    scenes: Annotated[
        Optional[int],
        typer.Option("--scenes", help="Scenes; each gives max-objects images (default: the embedded kit's count)."),
    ] = None,
    max_objects: Annotated[
        Optional[int], typer.Option("--max-objects", help="Objects in a finished scene (default 3).")
    ] = None,
    size: Annotated[
        Optional[str], typer.Option("--size", help="Frame WIDTHxHEIGHT, 4:3 (default 128x96; course: 320x240).")
    ] = None,
    seed: SeedOpt = None,
    workers: Annotated[
        Optional[int], optional_int("--workers", help="Processes (default and none: all cores).")
    ] = None,
    preview: Annotated[Optional[Path], typer.Option("--preview", help="Also write a contact sheet PNG.")] = None,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Render CLEVR-like scenes into the course layout (resumable; same seed -> same bytes)."""
    import time

    from iclevr.data.preview import contact_sheet
    from iclevr.data.synth import SynthSettings
    from iclevr.data.synth import synth as run_synth
    from iclevr.settings import resolve

    names = ("out", "scenes", "max_objects", "size", "seed", "workers")
    settings = resolve(SynthSettings, config=config, overrides=typed_overrides(ctx, {n: n for n in names}))
    if print_config:
        return print_settings(settings)
    start = time.perf_counter()
    with _bar("rendering") as update:
        folder = run_synth(settings, progress=update)
    images = settings.scenes * settings.max_objects
    console.print(
        f"wrote {images:,} images ({settings.size[0]}x{settings.size[1]}) and the JSON files to "
        f"{folder} in {time.perf_counter() - start:.1f} s"
    )
    if preview is not None:
        console.print(f"contact sheet: {contact_sheet(folder, preview)}")


@data_app.command("preview")
@command
def preview(
    data_dir: DataDirOpt = None,
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")] = Path("contact_sheet.png"),
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 24,
    size: Annotated[str, typer.Option("--size", help="64 (what the model sees, shown 2x) or full.")] = "64",
) -> None:
    """Write a labelled contact sheet of a data folder's training images."""
    from iclevr.data.kits import resolve_data_dir
    from iclevr.data.preview import contact_sheet

    path = contact_sheet(resolve_data_dir(data_dir, console), out, n=n, size=size)
    console.print(f"contact sheet of {n} images ({size}) written to {path}")


@contextmanager
def _bar(description: str):
    """A Rich progress bar shown from its first update (so errors before any work print no empty bar)."""
    from iclevr.progress import progress_bar

    bar = progress_bar(console)
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()
