"""Where iclevr keeps things on disk: its cache home (embedded kits, data caches, the own evaluator), the
default home of run folders and the packaged pretrained model."""

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


def packaged_model_path() -> Path:
    """The packaged pretrained model: $ICLEVR_PACKAGED_MODEL, default iclevr/assets/pretrained.safetensors (an
    empty value counts as unset; a path to no file means no packaged model)."""
    default = Path(__file__).resolve().parent / "assets" / "pretrained.safetensors"
    return Path(os.environ.get("ICLEVR_PACKAGED_MODEL") or default)
