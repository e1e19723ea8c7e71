"""What every command module shares: the consoles, the error wrapper, the option types (defined once) and
the one way a command turns the options the user typed into settings overrides (`typed_overrides`).

Nothing heavy is imported here (no torch), so `iclevr --help` stays instant.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

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
    """Wrap a command: UserError or a full disk -> one red line + exit 2 (or the error's own code, e.g. 3 for a
    training stopped with its state saved); Ctrl-C -> exit 130; bugs -> short hint, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _warning_line(warnings.showwarning)
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
            from iclevr.fileio import explain_os_error

            if (line := explain_os_error(e)) is not None:  # a full disk or a permission outside fileio's writers
                raise fail(_escape(line), 2) from None
            raise fail(
                f"unexpected {type(e).__name__}: {_escape(str(e)).splitlines()[0] if str(e) else ''} "
                "(this is a bug or an unusual environment; re-run with --debug for the traceback)",
                1,
            ) from None

    return wrapper


def _warning_line(previous: Callable) -> Callable:
    """A warnings.showwarning that prints iclevr's own warnings as one yellow `warning:` line (no source path);
    other warnings go to `previous`."""

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and "iclevr" in Path(filename).parts:
            err_console.print(f"[yellow]warning:[/] {_escape(str(message))}", soft_wrap=True)
        else:
            previous(message, category, filename, lineno, file, line)

    return show


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# Where a typed value comes from; a value from DEFAULT (the flag's default) is never an override.
TYPED_SOURCES = ("COMMANDLINE", "ENVIRONMENT")


def resume_config(resume: Path | None, out: Path | None, config: Path | None) -> Path | None:
    """The config a `--resume RUN` starts from: the run's own settings.json unless --config names one (flags
    still override it); --resume and --out naming different folders is one error."""
    if resume is not None and out is not None and resume != out:
        raise UserError(f"--resume {resume} and --out {out} name different run folders; give one of them")
    if resume is not None and config is None and (resume / "settings.json").is_file():
        return resume / "settings.json"
    return config


def typed_overrides(ctx: typer.Context, mapping: dict[str, str | tuple[str, Callable[[Any], Any]]]) -> dict[str, Any]:
    """Settings overrides {dotted key: value} from only the options the user typed (never a flag's default).

    `mapping` maps an option's parameter name to its dotted settings key, or to (key, convert) when the typed
    text needs converting ("0,1" -> [0, 1]); convert is not called for a `none` typed on purpose.
    """
    overrides: dict[str, Any] = {}
    for name, target in mapping.items():
        if name not in ctx.params:
            raise KeyError(f"command has no option {name!r}")  # a typo in the command's table
        if getattr(ctx.get_parameter_source(name), "name", None) not in TYPED_SOURCES:
            continue
        key, convert = (target, None) if isinstance(target, str) else target
        value = ctx.params[name]
        overrides[key] = convert(value) if convert is not None and value is not None else value
    return overrides


def parse_int_list(text: str, option: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]: at least one non-negative integer, else a UserError naming `option`."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{option} must be comma-separated integers such as 0,1,2, got {text!r}") from None
    if not values or min(values) < 0:
        raise UserError(f"{option} needs at least one non-negative integer, got {text!r}")
    return values


def _none_or(kind: type) -> Callable[[str], Any]:
    """A parser for optional numbers: `none` sets the setting to None on purpose, anything else is `kind`."""

    def parse(text: Any) -> Any:
        if isinstance(text, str) and text.strip().lower() == "none":
            return None
        return kind(text)

    return parse


int_or_none = _none_or(int)
float_or_none = _none_or(float)


def optional_int(*names: str, help: str) -> Any:
    """A typer.Option for an optional integer setting that also accepts `none`."""
    return typer.Option(*names, parser=int_or_none, metavar="<int|none>", help=help)


def optional_float(*names: str, help: str) -> Any:
    """A typer.Option for an optional number setting that also accepts `none`."""
    return typer.Option(*names, parser=float_or_none, metavar="<float|none>", help=help)


ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", help="JSON or TOML settings file (defaults < preset < config < the flags you type)."),
]
PrintConfigOpt = Annotated[
    bool, typer.Option("--print-config", "--dry-run", help="Print the resolved settings and exit.")
]
DataDirOpt = Annotated[
    Optional[Path], typer.Option("--data-dir", help="Course data folder; default: the embedded rendered kit.")
]
PresetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--preset", help="Settings preset: seed, small, small-tokens, tiny, tiny-tokens, tiny-latent or tiny-patch."
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
CheckpointOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--checkpoint",
        help="Run folder (its EMA weights) or "
        ".safetensors file; default: the newest finished run under "
        "checkpoints/, else the packaged pretrained model.",
    ),
]
SamplerOpt = Annotated[Optional[str], typer.Option("--sampler", help="ddpm, ddim, dpmpp, dpmpp-sde or unipc.")]
StepsOpt = Annotated[
    Optional[int],
    optional_int(
        "--steps",
        help="Sampling steps (default: the sampler's; none = "
        "the sampler's default even where the weights store others).",
    ),
]
GuidanceOpt = Annotated[Optional[float], typer.Option("--guidance-scale", help="Classifier-free guidance scale.")]


def print_settings(settings: Any) -> None:
    """Print resolved settings as JSON (for --print-config / --dry-run)."""
    from iclevr.settings import to_json

    console.print_json(to_json(settings))
