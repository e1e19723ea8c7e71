"""One writer per run folder: an OS lock on <run>/train.lock, held by `iclevr train` while it runs.

The lock is `flock(LOCK_EX)` on an open file, so the kernel drops it when the process ends however it ends
(exit, SIGKILL, the OOM killer): a killed run never leaves a stale lock behind. The file itself stays and
names its last writer (pid, host, start time), which is what a second writer is told and what `sample`,
`eval` and `export` report for a run that has no weights yet. Readers never take the lock: weights and
states are replaced by one atomic rename, so a reader always sees the last complete file.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from iclevr.errors import UserError

LOCK_NAME = "train.lock"
# flock is not offered by every network file system (Lustre without -o flock, some NFS set-ups)
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def lock_path(run: Path) -> Path:
    """The lock file of run folder `run`."""
    return Path(run) / LOCK_NAME


@contextmanager
def run_lock(run: Path, enabled: bool = True) -> Iterator[None]:
    """Hold the writer lock of `run` for the block (created if needed); a UserError naming the folder and
    the process that holds it if another process does, before anything in the folder is touched."""
    if not enabled:
        yield
        return
    fd = _open(Path(run))
    try:
        if _acquire(fd, Path(run)):
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open(run: Path) -> int:
    """Open (create) the lock file without changing its content; write failures as one clear line."""
    from iclevr.fileio import fault_errno, write_error

    try:
        run.mkdir(parents=True, exist_ok=True)
        return os.open(lock_path(run), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if fault_errno(e) is None:
            raise UserError(f"cannot use {run} as a run folder: {e.strerror or e}") from None
        raise write_error(lock_path(run), fault_errno(e), what="the run lock", kept=False) from None


def _acquire(fd: int, run: Path) -> bool:
    """Take the lock without waiting: True when taken, False when the file system has no locks (warned)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        holder = read_holder(run, wait=True)
        stop = f"`kill {holder['pid']}` on {holder.get('host', '?')}" if holder and "pid" in holder else "kill it"
        raise UserError(f"{run} is being trained by another process ({describe(holder)}); wait for it to finish, "
                        f"stop it ({stop} saves its state), or train into another --out folder") from None
    except OSError as e:
        if e.errno not in UNSUPPORTED:
            raise
        warnings.warn(f"the file system of {run} does not support locks ({e.strerror}): nothing stops a second "
                      "`iclevr train` from writing into this run folder at the same time", stacklevel=3)
        return False


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


def describe(holder: dict | None) -> str:
    """'pid 123 on host h, started 2026-12-02 10:00:00 UTC' (or what is known of it)."""
    if not holder:
        return "its details are not readable"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"


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
