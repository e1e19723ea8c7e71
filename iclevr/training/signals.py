"""Stop requests for a training run: Ctrl-C, SIGTERM and SIGUSR1 become a flag the loop checks between steps.

SIGINT is Ctrl-C; SIGTERM is what `kill`, `docker stop` and a cluster scheduler (SLURM's preemption and time
limit) send a few seconds before SIGKILL; SIGUSR1 is what SLURM sends ahead of the time limit when asked to
(`#SBATCH --signal=B:USR1@120`, forwarded by the batch script). The first of any of them lets the step in
flight finish, after which the run saves its state and exits with code 3 (iclevr.errors.EXIT_RESUMABLE).
A second Ctrl-C stops at once (mid-step, nothing saved); repeated SIGTERM/SIGUSR1 (a launcher forwarding the
signal it got) do not, so the save is never cut short by them. In a multi-process run the loop reduces the
flag over all processes at each step boundary, so every process stops at the same step.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


@contextmanager
def interrupt_flag() -> Iterator[dict]:
    """Yield {"set": bool, "signal": name of the first stop signal or None} while the handlers are installed."""
    flag = {"set": False, "signal": None}

    def handler(signum, frame):
        if flag["set"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["set"] = True
        flag["signal"] = flag["signal"] or signal.Signals(signum).name

    previous = {}
    try:
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no handlers, KeyboardInterrupt is handled by the caller
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)  # None: set outside Python


def stop_cause(flag: dict) -> str:
    """How a run stopped on request, for its last line: 'stopped by SIGTERM', 'interrupted (Ctrl-C)', ..."""
    name = flag.get("signal")
    if name == "SIGINT":
        return "interrupted (Ctrl-C)"
    if name:
        return f"stopped by {name}"
    return "stopped (another process of the run was signalled)"
