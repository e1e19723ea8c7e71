"""The `iclevr` console entry point: a Typer app that mounts one module per command.

Nothing heavy is imported here (no torch), so `iclevr --help` is instant; each command imports the
core modules it needs inside its function body.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

import typer
from rich.console import Console

from iclevr import __version__
from iclevr.errors import UserError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
STATE = {"debug": False}

app = typer.Typer(
    name="iclevr",
    help="Train, sample, trace and evaluate a class-conditional diffusion model for i-CLEVR scenes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Check, render and preview course-layout data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


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
    """Class-conditional diffusion for i-CLEVR: data, train, sample, denoise-trace, eval, compare-schedules."""
    STATE["debug"] = debug


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one red line on stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True)
    return typer.Exit(code)


def command(fn: Callable) -> Callable:
    """Wrap a command: UserError -> one red line + exit 2; Ctrl-C -> exit 130; bugs -> short hint, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except UserError as e:
            raise fail(_escape(str(e)), e.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except Exception as e:  # noqa: BLE001 - the one place unexpected errors are turned into a hint
            if STATE["debug"]:
                raise
            raise fail(f"unexpected {type(e).__name__}: {_escape(str(e)).splitlines()[0] if str(e) else ''} "
                       "(this is a bug or an unusual environment; re-run with --debug for the traceback)",
                       1) from None

    return wrapper


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="iclevr")


# Register the command modules (each adds its commands to `app` or a sub-app).
from iclevr.cli import data as _data  # noqa: E402,F401

for _name in ("train", "sample", "evaluate", "compare", "demo", "export"):
    try:
        __import__(f"iclevr.cli.{_name}")
    except ModuleNotFoundError as _e:  # a command module not written yet
        if _e.name != f"iclevr.cli.{_name}":
            raise

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
