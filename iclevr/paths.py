"""Where iclevr keeps things on disk: its cache home (embedded kits, data caches, the own evaluator) and the
default home of run folders."""

from __future__ import annotations

import os
from pathlib import Path


def iclevr_home() -> Path:
    """The cache folder of the project: $ICLEVR_HOME, default ~/.cache/iclevr (an empty value counts as unset)."""
    # `ICLEVR_HOME= iclevr ...` must not turn into the current folder, so "" falls back like a missing variable
    return Path(os.environ.get("ICLEVR_HOME") or Path.home() / ".cache" / "iclevr")


def checkpoints_root() -> Path:
    """Default home of run folders: $ICLEVR_CHECKPOINTS, default ./checkpoints (an empty value counts as unset)."""
    return Path(os.environ.get("ICLEVR_CHECKPOINTS") or "checkpoints")
