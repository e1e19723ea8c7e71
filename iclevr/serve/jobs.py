"""The generation queue: one generation at a time in one worker thread (a CPU runs one UNet batch well, not
two), the others waiting in order and told their place whenever it changes.

Every job talks to its page through `emit(event)`, a thread-safe function the app supplies. Events are
dicts with a "type": "queued" {position: generations ahead}, then the runner's own events ("started",
"frame"), then exactly one terminal event: "done", "error" {message} or "cancelled" {message}.

Cancelling (the browser went away, or the server is stopping) sets the job's flag: a waiting job is dropped
at once, a running one stops at its next sampler step, because the runner checks `job.cancelled` in the
sampling callback, so a disconnected browser frees the worker within one step.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iclevr.errors import UserError

TERMINAL = ("done", "error", "cancelled")
log = logging.getLogger("iclevr.serve")


class Cancelled(Exception):
    """Raised inside the sampling callback when the job's flag is set: unwinds the sampler."""


class QueueFull(UserError):
    """More generations are waiting than the queue holds."""


@dataclass(eq=False)
class Job:
    """One request in the queue: its validated request, where its events go, and its cancel flag."""

    request: Any
    emit: Callable[[dict], None]
    flag: threading.Event = field(default_factory=threading.Event)
    reason: str = "the page was closed"
    position: int | None = None  # generations ahead, as last told to the page

    def cancel(self, reason: str | None = None) -> None:
        """Ask the job to stop (before it starts, or at its next sampler step)."""
        if reason and not self.flag.is_set():
            self.reason = reason
        self.flag.set()

    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self.flag.is_set()


class JobQueue:
    """FIFO of jobs run one at a time by a daemon worker thread calling `runner(job) -> done event`."""

    def __init__(self, runner: Callable[[Job], dict], limit: int = 16):
        self.runner, self.limit = runner, limit
        self.waiting: deque[Job] = deque()
        self.running: Job | None = None
        self.served = 0  # jobs finished, whatever their end
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="iclevr-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, request: Any, emit: Callable[[dict], None]) -> Job:
        """Queue a request; its page hears its position at once. QueueFull when `limit` are waiting."""
        with self._cond:
            if self._closed:
                raise QueueFull("the server is stopping")
            if len(self.waiting) >= self.limit:
                raise QueueFull(f"{len(self.waiting)} generations are already waiting; try again in a moment")
            job = Job(request, emit)
            self.waiting.append(job)
            self._tell_positions()
            self._cond.notify_all()
        return job

    def cancel(self, job: Job, reason: str | None = None) -> None:
        """Cancel one job: dropped from the queue if waiting, stopped at its next step if running."""
        job.cancel(reason)
        with self._cond:
            if job in self.waiting:
                self.waiting.remove(job)
                job.emit({"type": "cancelled", "message": job.reason})
                self._tell_positions()
            self._cond.notify_all()

    def close(self, reason: str = "the server is stopping", timeout: float | None = 5.0) -> None:
        """Cancel every job, stop the worker and wait up to `timeout` seconds for it."""
        with self._cond:
            self._closed = True
            jobs = list(self.waiting) + ([self.running] if self.running else [])
        for job in jobs:
            self.cancel(job, reason)
        with self._cond:
            self._cond.notify_all()
        if timeout is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def idle(self) -> bool:
        """True when nothing runs and nothing waits."""
        with self._cond:
            return self.running is None and not self.waiting

    def _tell_positions(self) -> None:
        """Tell every waiting job how many generations are ahead of it (call with the lock held)."""
        ahead = 1 if self.running is not None else 0
        for k, job in enumerate(self.waiting):
            if job.position != ahead + k:  # tell only a change
                job.position = ahead + k
                job.emit({"type": "queued", "position": job.position})

    def _next(self) -> Job | None:
        """Block until a job can start (None once closed)."""
        with self._cond:
            while not self.waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            self.running = self.waiting.popleft()
            self._tell_positions()
            return self.running

    def _work(self) -> None:
        """The worker loop: run each job, then send its one terminal event."""
        while (job := self._next()) is not None:
            try:
                event = {"type": "cancelled", "message": job.reason} if job.cancelled() else self.runner(job)
            except Cancelled:
                event = {"type": "cancelled", "message": job.reason}
            except UserError as e:
                event = {"type": "error", "message": str(e)}
            except Exception as e:  # noqa: BLE001 - the page gets one line, the server log the traceback
                log.exception("generation failed")
                event = {
                    "type": "error",
                    "message": f"generation failed ({type(e).__name__}: {e}); the server log has the details",
                }
            with self._cond:
                self.running = None
                self.served += 1
                job.emit(event)
                self._tell_positions()
