"""The one Rich progress bar set-up: description, bar, done/total, elapsed and remaining time."""

from __future__ import annotations


def progress_bar(console=None, *, enabled: bool = True, transient: bool = False, columns: tuple | None = None):
    """A Rich Progress with iclevr's columns (or `columns`); `enabled=False` draws nothing (tasks still count)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    if columns is None:
        columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console, transient=transient, disable=not enabled)
