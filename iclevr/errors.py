"""The one exception type a user can cause: shown as one red line, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (labels, files, settings): one clear line, exit 2."""

    exit_code = 2


class TrainingInterrupted(UserError):
    """Training was stopped (Ctrl-C or a non-finite loss); the state on disk is resumable."""


def format_validation_error(err, prefix: str = "settings") -> str:
    """Turn a pydantic ValidationError into readable lines: `prefix.field: message` per bad field."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()))
        msg = e.get("msg", "invalid value")
        if e.get("type") == "extra_forbidden":
            msg = "unknown setting"
        lines.append(f"{prefix}.{loc}: {msg}" if loc else f"{prefix}: {msg}")
    return "; ".join(lines)
