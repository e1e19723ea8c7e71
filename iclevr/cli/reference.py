"""The command reference (docs/commands.md), generated from the Typer app itself so it cannot drift.

    python -m iclevr.cli.reference            print the page
    python -m iclevr.cli.reference --write    rewrite docs/commands.md (after changing a command or a help text)
    python -m iclevr.cli.reference --check    exit 1 when docs/commands.md differs from the CLI

tests/test_reference.py fails when the committed page is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

PAGE = Path(__file__).resolve().parents[2] / "docs" / "commands.md"
REGENERATE = "python -m iclevr.cli.reference --write"
HIDDEN = ("help", "install_completion", "show_completion")


def _walk(cmd, path: list[str]):
    """(path, click command) for the app and every command under it, sub-commands in name order."""
    yield path, cmd
    if hasattr(cmd, "commands"):
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], path + [name])


def _cell(text: str) -> str:
    """Text fit for one cell of a Markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


def _param_row(p) -> str:
    """One table row: the option's names (or the argument's metavar), its help and its default."""
    names = (
        ", ".join(f"`{o}`" for o in (p.opts + p.secondary_opts))
        if p.param_type_name == "option"
        else f"`{p.human_readable_name}`"
    )
    default = p.default if not callable(p.default) else None
    shown = "" if default in (None, False, ()) or getattr(p, "is_flag", False) else f" (default: `{default}`)"
    return f"| {names} | {_cell(getattr(p, 'help', None) or '')}{shown} |"


def _section(path: list[str], cmd) -> str:
    """The Markdown of one command: heading, help, usage line, arguments and options."""
    help_text = (cmd.help or "").strip().split("\f")[0].strip()
    params = [p for p in cmd.params if p.name not in HIDDEN]
    args = [p for p in params if p.param_type_name == "argument"]
    opts = [p for p in params if p.param_type_name == "option"]
    usage = " ".join(path + [a.human_readable_name for a in args] + (["[OPTIONS]"] if opts else []))
    if hasattr(cmd, "commands"):
        usage = " ".join(path + ["COMMAND", "[OPTIONS]"])
    parts = [f"## `{' '.join(path)}`", "", help_text, "", f"```\n{usage}\n```", ""]
    if params:
        parts += ["| option | meaning |", "| --- | --- |", *(_param_row(p) for p in args + opts), ""]
    return "\n".join(parts)


def generate() -> str:
    """The whole page: every command of the app, its help, usage, arguments and options."""
    from iclevr.cli.app import app

    root = typer.main.get_command(app)
    sections = [
        _section(path, cmd)
        for path, cmd in _walk(root, ["iclevr"])
        if path == ["iclevr"] or not hasattr(cmd, "commands")
    ]
    head = (
        "# Command reference\n\nGenerated from the CLI by `" + REGENERATE + "`; do not edit it by hand "
        "(`tests/test_reference.py` fails when it is stale). `iclevr COMMAND --help` prints the same.\n"
    )
    return head + "\n" + "\n".join(sections).rstrip() + "\n"


def main(argv: list[str]) -> int:
    """Print, --write or --check the page; returns the exit code."""
    if argv == ["--write"]:
        PAGE.write_text(generate())
        print(f"wrote {PAGE}")
        return 0
    if argv == ["--check"]:
        if PAGE.is_file() and PAGE.read_text() == generate():
            return 0
        print(f"{PAGE} is stale: run `{REGENERATE}`", file=sys.stderr)
        return 1
    if argv:
        print("usage: python -m iclevr.cli.reference [--write | --check]", file=sys.stderr)
        return 2
    sys.stdout.write(generate())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
