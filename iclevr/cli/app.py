"""The `iclevr` console entry point: the Typer app, with every command module registered explicitly.

Nothing heavy is imported here (no torch), so `iclevr --help` is instant; each command imports the core
modules it needs inside its function body.
"""

from __future__ import annotations

import sys

import click
import typer
from rich.markup import escape
from typer import rich_utils as typer_rich_utils

from iclevr import __version__
from iclevr.cli import autoencoder, compare, data, demo, evaluate, export, sample, serve, train
from iclevr.cli.common import STATE, console, err_console

app = typer.Typer(
    name="iclevr",
    help="Train, sample, trace and evaluate a class-conditional diffusion model for i-CLEVR scenes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _one_line_usage_error(error: click.ClickException) -> None:
    """Click's usage errors (a word for a number, an unknown option) as one `error:` line like every other error,
    in place of Typer's boxed panel; the exit code stays click's 2."""
    if type(error).__name__ == "NoArgsIsHelpError":  # `iclevr` alone: the help is shown instead
        return
    ctx = getattr(error, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    err_console.print(f"[bold red]error:[/] {escape(error.format_message())}{hint}", soft_wrap=True)


typer_rich_utils.rich_format_error = _one_line_usage_error  # Typer calls it for every click usage error


def _version(value: bool) -> None:
    if value:
        console.print(f"iclevr {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
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
