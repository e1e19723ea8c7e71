"""The exceptions a user can cause, each shown as one red line, and the exit codes of every command.

Exit codes: 0 done; 1 a bug (re-run with --debug); 2 a problem the user can fix (input, settings, a full disk,
permissions, a run folder another process is training); 3 training stopped on request (the first Ctrl-C,
SIGTERM or SIGUSR1) with its state saved: `iclevr train --resume RUN` continues it; 130 a second Ctrl-C
(stopped mid-step: the run continues from its last saved state).
"""

from __future__ import annotations

EXIT_USER = 2
EXIT_RESUMABLE = 3
EXIT_CTRL_C = 130


class UserError(Exception):
    """A problem with the user's input (labels, files, settings): one clear line, exit 2."""

    exit_code = EXIT_USER


class WriteError(UserError):
    """Writing a file failed for a reason outside the program (full disk, quota, permissions, read-only)."""


class TrainingInterrupted(UserError):
    """Training was stopped (a non-finite loss, a second Ctrl-C); the last saved state on disk is resumable."""

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class TrainingStopped(TrainingInterrupted):
    """Training stopped on request (Ctrl-C, SIGTERM, SIGUSR1) after saving its state: exit 3, resumable."""

    exit_code = EXIT_RESUMABLE


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
