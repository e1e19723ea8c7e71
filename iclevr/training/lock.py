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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from iclevr.errors import UserError
from iclevr.runinfo import lock_path, read_holder  # the lock file's reading side (re-exported)

# flock is not offered by every network file system (Lustre without -o flock, some NFS set-ups)
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


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
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "command": " ".join(sys.argv),
            }
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
        raise UserError(
            f"{run} is being trained by another process ({describe(holder)}); wait for it to finish, "
            f"stop it ({stop} saves its state), or train into another --out folder"
        ) from None
    except OSError as e:
        if e.errno not in UNSUPPORTED:
            raise
        warnings.warn(
            f"the file system of {run} does not support locks ({e.strerror}): nothing stops a second "
            "`iclevr train` from writing into this run folder at the same time",
            stacklevel=3,
        )
        return False


def describe(holder: dict | None) -> str:
    """'pid 123 on host h, started 2026-12-02 10:00:00 UTC' (or what is known of it)."""
    if not holder:
        return "its details are not readable"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
