"""The embedded kits and which kit a command reads: --data-dir, or the embedded default rendered on first use.

This room sits above both data/course.py (reading a kit) and data/synth.py (writing one): a command that
needs training images asks here, and the default kit is rendered under $ICLEVR_HOME/kits the first time.
Commands that need only the condition lists use data/course.py's load_conditions, which never renders.
"""

from __future__ import annotations

from pathlib import Path

from iclevr.data import plan as P
from iclevr.data.synth import embedded_kit_dir, is_complete, write_kit


def ensure_kit(name: str, spec: dict, console=None, workers: int | None = None) -> Path:
    """The embedded kit `name` under $ICLEVR_HOME/kits, rendered (or resumed) on first use."""
    from iclevr.progress import progress_bar

    out = embedded_kit_dir(name)
    if is_complete(out):
        return out
    images = spec["scenes"] * spec["max_objects"]
    w, h = spec["size"]
    if console is None:
        return write_kit(out, workers=workers, **spec)
    console.print(
        f"[bold]No --data-dir given:[/] rendering the embedded kit '{name}' ({images:,} images, "
        f"{w}x{h}) into {out} (once; set ICLEVR_HOME to move it; an interrupted render resumes)"
    )
    with progress_bar(console) as bar:
        task = bar.add_task("rendering", total=images)
        write_kit(out, workers=workers, progress=lambda n, total: bar.update(task, completed=n), **spec)
    return out


def ensure_default_kit(console=None) -> Path:
    """The embedded default kit (6,003 scenes, 18,009 images), rendered into $ICLEVR_HOME on first use."""
    return ensure_kit(P.DEFAULT_KIT_NAME, P.DEFAULT_KIT, console)


def ensure_mini_kit(console=None) -> Path:
    """A small fixed kit (200 scenes, 600 images at 64x48) for tests and quick demos."""
    return ensure_kit(P.MINI_KIT_NAME, P.MINI_KIT, console, workers=1)


def resolve_data_dir(data_dir: Path | None, console=None) -> Path:
    """The user's data folder, or the embedded rendered kit (rendered on first use) when none is given."""
    if data_dir is not None:
        return Path(data_dir)
    return ensure_default_kit(console=console)
