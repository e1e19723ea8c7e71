"""Resumable training state: one torch file per save under <run>/state/, written atomically, newest K kept.

A state file `state/step-XXXXXXXX.pt` holds plain tensors and containers only (loadable with
`torch.load(weights_only=True)`): model, EMA, optimizer and grad-scaler state dicts, the step, the accumulated
wall time (a time budget's LR continues from it) and the RNG states. It is written to a temporary file in the same
folder, fsynced and renamed, so a process killed mid-write (even by SIGKILL) leaves the previous state
intact; leftover temporary files are ignored when loading and removed at the next save.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from iclevr.errors import UserError

FORMAT = "iclevr-train-state"
VERSION = 1
_NAME = re.compile(r"^step-(\d{8,})\.pt$")


def state_path(folder: Path, step: int) -> Path:
    """Path of the state written after optimizer step `step`."""
    return Path(folder) / f"step-{step:08d}.pt"


def list_states(folder: Path) -> list[Path]:
    """Complete state files in `folder`, oldest first (temporary files of interrupted writes excluded)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def rng_states() -> dict:
    """Torch CPU and CUDA RNG states (tensors only, so weights_only loading works)."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore RNG states saved by rng_states() (CUDA states only when the GPU count matches)."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_state(folder: Path, state: dict, keep: int) -> Path:
    """Write `state` (must contain 'step') atomically as folder/step-XXXXXXXX.pt; keep the newest `keep`.

    A full disk, a quota or a permission problem is one WriteError naming the state, the space needed and free,
    and the last good state, which is kept (as is every other file)."""
    from iclevr.errors import WriteError
    from iclevr.fileio import atomic_path, nbytes, remove_stale_temps, writing

    folder = Path(folder)
    path = state_path(folder, int(state["step"]))
    try:
        with writing(folder, "training state folder"):
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(folder / "step-*.pt")  # left by a killed writer; the run lock makes us the only one
        with atomic_path(path, size=nbytes(state), what="training state") as tmp:
            torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    except WriteError as e:
        good = [p for p in list_states(folder) if p != path]
        kept = f"the last good state {good[-1].name} is kept" if good else "no earlier state exists"
        raise WriteError(f"{e}; {kept}") from None
    for old in list_states(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_state(path: Path, map_location="cpu") -> dict:
    """Load one state file (weights_only=True); UserError if it is not a readable iclevr training state."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, foreign pickle, ...
        raise UserError(f"training state {path} cannot be read ({type(e).__name__}); it is damaged") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not an iclevr training state")
    return state


def load_latest(folder: Path, map_location="cpu") -> tuple[dict, Path] | None:
    """The newest loadable state in `folder` (falls back to older ones if the newest is damaged), or None when
    it holds no state; a UserError when every state is damaged (starting over would replace the run's weights)."""
    states = list_states(folder)
    for path in reversed(states):
        try:
            return load_state(path, map_location), path
        except UserError as e:
            warnings.warn(f"{e}; trying an older state", stacklevel=2)
    if states:
        run = Path(folder).parent
        raise UserError(
            f"cannot resume {run}: none of its {len(states)} training states can be read (newest "
            f"{states[-1].name}); its weights/ are left as they are; sample from them, or train again "
            f"with --overwrite or into a new --out folder"
        )
    return None
