"""What every command module shares: the consoles, the error wrapper and the option types (defined once).

Nothing heavy is imported here (no torch), so `iclevr --help` stays instant.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console

from iclevr.errors import UserError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
STATE = {"debug": False}


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


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="JSON or TOML settings file "
                                                   "(defaults < preset < config < flags).")]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", "--dry-run",
                                              help="Print the resolved settings and exit.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Course data folder; "
                                                    "default: the embedded rendered kit.")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help="Settings preset: seed, small or tiny.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
CheckpointOpt = Annotated[Optional[Path], typer.Option("--checkpoint", help="Run folder (its EMA weights) or "
                                                       ".safetensors file; default: newest run under checkpoints/.")]
SamplerOpt = Annotated[Optional[str], typer.Option("--sampler", help="ddpm, ddim, dpmpp, dpmpp-sde or unipc.")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Sampling steps (default: the sampler's).")]
GuidanceOpt = Annotated[Optional[float], typer.Option("--guidance-scale", help="Classifier-free guidance scale.")]


def print_settings(settings: Any) -> None:
    """Print resolved settings as JSON (for --print-config / --dry-run)."""
    from iclevr.settings import to_json

    console.print_json(to_json(settings))
