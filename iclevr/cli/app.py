"""The `iclevr` console entry point: the Typer app, with every command module registered explicitly.

Nothing heavy is imported here (no torch), so `iclevr --help` is instant; each command imports the core
modules it needs inside its function body.
"""

from __future__ import annotations

import sys

import typer

from iclevr import __version__
from iclevr.cli import autoencoder, compare, data, demo, evaluate, export, sample, serve, train
from iclevr.cli.common import STATE, console

app = typer.Typer(
    name="iclevr",
    help="Train, sample, trace and evaluate a class-conditional diffusion model for i-CLEVR scenes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        console.print(f"iclevr {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Show the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks of unexpected errors."),
) -> None:
    """Class-conditional diffusion for i-CLEVR: data, train, sample, denoise-trace, eval, compare-schedules, serve."""
    STATE["debug"] = debug


# The command table: one line per command, in the order `iclevr --help` lists them.
app.add_typer(data.data_app, name="data")
app.command("train")(train.train_cmd)
app.command("sample")(sample.sample_cmd)
app.command("denoise-trace")(sample.denoise_trace_cmd)
app.command("eval")(evaluate.eval_cmd)
app.add_typer(evaluate.evaluator_app, name="evaluator")
app.add_typer(autoencoder.autoencoder_app, name="autoencoder")
app.command("compare-schedules")(compare.compare_schedules)
app.command("demo")(demo.demo)
app.command("export")(export.export_cmd)
app.command("serve")(serve.serve_cmd)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="iclevr")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
