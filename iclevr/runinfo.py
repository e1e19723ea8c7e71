"""What a run folder says about itself, read without touching it: who trains it, whether it finished.

The ground floor under `weights` (which run a command uses) and `training` (which writes runs). A run folder
holds `train.lock` (its last writer: pid, host, start time; iclevr.training.lock holds the OS lock on it) and
`progress.json` (step, wall time, `finished`: whether the run stopped at its own budget rather than on
request), written by iclevr.training.run_folder.save_snapshot beside the weights.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "train.lock"
PROGRESS_NAME = "progress.json"


def lock_path(run: Path) -> Path:
    """The lock file of run folder `run`."""
    return Path(run) / LOCK_NAME


def read_holder(run: Path, wait: bool = False) -> dict | None:
    """What the lock file says about its last writer ({pid, host, started, command}), or None.

    With `wait`, give a writer that has just taken the lock a moment to write its line."""
    for _ in range(20 if wait else 1):
        try:
            text = lock_path(run).read_text()
            holder = json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            holder = None
        if isinstance(holder, dict):
            return holder
        if wait:
            time.sleep(0.05)
    return None


def is_held(run: Path) -> bool | None:
    """Whether a process on this machine holds the lock of `run` now, read from /proc/locks without taking it
    (None where there is no /proc/locks)."""
    try:
        inode = os.stat(lock_path(run)).st_ino
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    # lines like "1: FLOCK  ADVISORY  WRITE 1747 fe:00:2146352 0 EOF" (pid, then major:minor:inode)
    rows = [line.split() for line in table.splitlines()]
    return any(len(f) > 5 and f[1] == "FLOCK" and f[5].endswith(f":{inode}") for f in rows)


def is_alive(holder: dict | None) -> bool:
    """True when `holder` is a process on this host that still exists (unknown hosts count as gone)."""
    if not holder or holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def no_weights_line(run: Path) -> str | None:
    """The one line for a run folder whose training has not written weights yet; None if `run` is no run."""
    run = Path(run)
    holder = read_holder(run)
    settings = run / "settings.json"
    if holder is None and not settings.is_file() and not (run / "state").is_dir():
        return None
    if holder and holder.get("started"):
        started = holder["started"]
    elif settings.is_file():
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(settings.stat().st_mtime))
    else:
        started = "an unknown time"
    states = sorted(p.name for p in (run / "state").glob("step-*.pt")) if (run / "state").is_dir() else []
    saved = f"state {states[-1]} saved" if states else "no state saved"
    line = f"{run} has no weights yet (training started at {started}, {saved})"
    held = is_held(run)
    if held or (held is None and is_alive(holder)):
        return line + f"; it is still training (pid {holder['pid']}): its first save writes the weights"
    return line + f"; continue it with `iclevr train --resume {run}`"


def read_progress(run: Path) -> dict | None:
    """The run's progress.json ({step, finished, stop_reason, ...}), or None when it has none or is unreadable."""
    try:
        progress = json.loads((Path(run) / PROGRESS_NAME).read_text())
    except (OSError, ValueError):
        return None
    return progress if isinstance(progress, dict) else None


def unfinished_step(run: Path) -> int | None:
    """The step of a run whose weights come from an unfinished training (stopped on request, killed, or still
    going), or None for a finished run and for a folder that does not record it (an older run)."""
    progress = read_progress(run)
    if progress is None or progress.get("finished", True):
        return None
    return int(progress.get("step", 0))
