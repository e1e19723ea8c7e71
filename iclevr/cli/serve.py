"""`iclevr serve`: a local web page to compose a scene and watch it being denoised (iclevr/serve/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from iclevr.cli.common import (
    CheckpointOpt,
    ConfigOpt,
    DeviceOpt,
    PrintConfigOpt,
    command,
    console,
    print_settings,
    typed_overrides,
)


@command
def serve_cmd(
    ctx: typer.Context,
    checkpoint: CheckpointOpt = None,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to bind; another than 127.0.0.1 makes the page reachable from the network."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0 = any free port).")] = 7860,
    evaluator: Annotated[
        Optional[Path],
        typer.Option("--evaluator", help="Evaluator for the found/missed verdicts; default: the project's own."),
    ] = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Serve a local web page: pick objects, press Generate, watch the denoising, read the verdicts."""
    from iclevr.serve.app import ServeSettings, serve
    from iclevr.settings import resolve

    overrides = typed_overrides(
        ctx, {"checkpoint": "checkpoint", "host": "host", "port": "port", "evaluator": "evaluator", "device": "device"}
    )
    settings = resolve(ServeSettings, config=config, overrides=overrides)
    if print_config:
        return print_settings(settings)
    r = serve(settings, console)
    console.print(f"stopped ({r['served']} generation(s) served)")
