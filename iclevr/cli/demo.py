"""`iclevr demo`: render, evaluator, train the CPU preset, sample + score, trace — on a fresh machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from iclevr.cli.common import ConfigOpt, DataDirOpt, PrintConfigOpt, command, console, print_settings, typed_overrides


@command
def demo(
    ctx: typer.Context,
    minutes: Annotated[
        Optional[float], typer.Option(help="Training budget of the small CPU model (the CPU preset), in minutes.")
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Demo folder.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """The whole story end to end on the embedded world; re-running reuses what is done."""
    from iclevr.settings import resolve
    from iclevr.studies.demo import DemoSettings, print_summary, run_demo

    overrides = typed_overrides(ctx, {"minutes": "minutes", "out": "out", "device": "device", "data_dir": "data_dir"})
    settings = resolve(DemoSettings, config=config, overrides=overrides)
    if print_config:
        return print_settings(settings)
    print_summary(console, run_demo(settings, console))
