"""Write rendered CLEVR-like kits in the course layout (SPEC §3), and the embedded default kits.

<out>/iclevr/CLEVR_train_<scene:06d>_<k>.png   scene built one object at a time: _k holds k+1 objects
<out>/train.json, objects.json, test.json, new_test.json
<out>/kit.json                                   how the kit was made (written first, checked on resume)
<out>/.complete                                  written last: the kit is finished

Determinism: the labels of every scene come from one balanced plan drawn from the seed; scene i is
placed and rendered from a generator seeded with (seed, i). So the bytes written do not depend on the
number of workers or on interruptions. Each PNG is written atomically, JSON files and the marker last;
an interrupted kit resumes where it stopped.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import Field

from iclevr import labels as L
from iclevr.errors import UserError
from iclevr.fileio import atomic_write_bytes, atomic_write_text, check_writable, remove_stale_temps
from iclevr.settings import Section

KIT_VERSION = 1
MARKER = ".complete"
MANIFEST = "kit.json"
DEFAULT_KIT = {"scenes": 6003, "max_objects": 3, "size": (128, 96), "seed": 0}  # 18,009 images
MINI_KIT = {"scenes": 200, "max_objects": 3, "size": (64, 48), "seed": 0}  # 600 images, for tests and demos
TEST_SIZES = {1: 6, 2: 12, 3: 14}  # test.json: conditions per object count (32 conditions, 72 objects)
NEW_TEST_SIZES = {2: 12, 3: 20}  # new_test.json (32 conditions, 84 objects)
SUPERSAMPLE = 2
CHUNK = 8  # scenes per worker task


class SynthSettings(Section):
    """Settings of `iclevr data synth`."""

    out: Path | None = Field(None, description="Output folder; empty = the embedded default kit in $ICLEVR_HOME.")
    scenes: int = Field(6003, ge=1, le=1_000_000, description="Scenes to render (images = scenes * max_objects).")
    max_objects: int = Field(3, ge=1, le=10, description="Objects per finished scene (_0 ... _{K-1}).")
    size: tuple[int, int] = Field((128, 96), description="Frame width and height (4:3; 320x240 is the course's).")
    seed: int = Field(0, ge=0, description="Seed of the label plan and of every scene (scene i uses (seed, i)).")
    workers: int | None = Field(None, ge=1, description="Worker processes; empty = all cores.")


def synth(settings: SynthSettings, progress: Callable[[int, int], None] | None = None) -> Path:
    """Run `data synth`: render (or resume) the kit the settings describe; returns its folder."""
    s = settings
    out = s.out if s.out is not None else default_out(s.scenes, s.max_objects, s.size, s.seed)
    return write_kit(out, s.scenes, s.max_objects, s.size, s.seed, s.workers, progress)


def image_name(scene: int, k: int) -> str:
    """Course file name of scene `scene` with k+1 objects."""
    return f"CLEVR_train_{scene:06d}_{k}.png"


def label_plan(scenes: int, max_objects: int, seed: int) -> list[list[str]]:
    """Labels of every scene in placement order: each position is class-balanced, no repeats in a scene."""
    if max_objects > L.NUM_CLASSES:
        raise UserError(f"--max-objects {max_objects} is more than the {L.NUM_CLASSES} distinct classes")
    rng = np.random.default_rng([seed, 0x1AB])
    plan = np.stack([rng.permutation(np.resize(rng.permutation(L.NUM_CLASSES), scenes))
                     for _ in range(max_objects)], axis=1)  # (S, K)
    for k in range(1, max_objects):
        for i in range(scenes):
            while plan[i, k] in plan[i, :k]:  # swap with another scene's k-th label; keeps the column balanced
                j = int(rng.integers(scenes))
                if plan[j, k] not in plan[i, :k] and plan[i, k] not in plan[j, :k]:
                    plan[i, k], plan[j, k] = plan[j, k], plan[i, k]
    return [[L.LABELS[c] for c in row] for row in plan]


def split_conditions(plan: list[list[str]], sizes: dict[int, int], seed: int, salt: int,
                     from_train: bool) -> list[list[str]]:
    """Conditions for test.json / new_test.json: training prefixes (`from_train`) or fresh combinations."""
    rng = np.random.default_rng([seed, salt])
    out: list[list[str]] = []
    for k, count in sizes.items():
        for _ in range(count):
            if from_train and k <= len(plan[0]):
                out.append(list(plan[int(rng.integers(len(plan)))][:k]))
            else:
                out.append([L.LABELS[c] for c in rng.choice(L.NUM_CLASSES, size=k, replace=False)])
    return out


def render_scene(images_dir: str, scene: int, labels: list[str], seed: int, size: tuple[int, int],
                 supersample: int = SUPERSAMPLE) -> int:
    """Place and render one scene's prefixes; write the missing PNGs atomically; return how many were written."""
    from PIL import Image

    from iclevr.data.world.render import render_sequence
    from iclevr.data.world.scene import place_sequence

    folder = Path(images_dir)
    todo = [k for k in range(len(labels)) if not (folder / image_name(scene, k)).is_file()]
    if not todo:
        return 0
    objects = place_sequence(np.random.default_rng([seed, scene]), labels)
    images = render_sequence(objects, size, supersample)
    for k in todo:
        buf = io.BytesIO()
        Image.fromarray(images[k]).save(buf, format="PNG", optimize=False)
        atomic_write_bytes(folder / image_name(scene, k), buf.getvalue())
    return len(todo)


def _worker_init() -> None:
    """Worker initializer: Ctrl-C is left to the parent (which cancels the queued work), and a worker
    whose parent was killed exits within a second instead of rendering on as an orphan."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)  # PNGs are written atomically: at most a hidden .tmp file is left, removed on resume

    threading.Thread(target=watch, daemon=True).start()


def _render_chunk(job: tuple) -> int:
    images_dir, seed, size, supersample, items = job
    return sum(render_scene(images_dir, i, labels, seed, size, supersample) for i, labels in items)


def _manifest(scenes: int, max_objects: int, size: tuple[int, int], seed: int) -> dict:
    return {"version": KIT_VERSION, "scenes": scenes, "max_objects": max_objects, "size": list(size),
            "seed": seed, "supersample": SUPERSAMPLE}


def is_complete(out: Path) -> bool:
    """True when `out` holds a finished rendered kit."""
    return (Path(out) / MARKER).is_file() and (Path(out) / MANIFEST).is_file()


def _claim(out: Path, manifest: dict) -> None:
    """Make sure `out` is empty, or an earlier (maybe unfinished) render with the same settings."""
    path = out / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != manifest:
            was = ", ".join(f"{k}={v}" for k, v in (old or {}).items() if k != "version") or "unreadable"
            raise UserError(f"{out} holds a kit rendered with other settings ({was}); choose another --out "
                            "or delete that folder")
        return
    if (out / "train.json").exists() or (out / "iclevr").exists():
        raise UserError(f"{out} already holds course data that this tool did not render; choose another --out")
    atomic_write_text(path, json.dumps(manifest, indent=1))


def write_kit(out: Path, scenes: int = 6003, max_objects: int = 3, size: tuple[int, int] = (128, 96),
              seed: int = 0, workers: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> Path:
    """Render a course-layout kit into `out` (resumable, byte-identical for any worker count); returns `out`."""
    if scenes < 1 or max_objects < 1:
        raise UserError("--scenes and --max-objects must be at least 1")
    if min(size) < 8 or max(size) > 4096:
        raise UserError(f"frame size {size[0]}x{size[1]} is out of range (8 to 4096 pixels a side)")
    out = check_writable(Path(out))
    manifest = _manifest(scenes, max_objects, tuple(size), seed)
    _claim(out, manifest)
    images_dir = out / "iclevr"
    images_dir.mkdir(exist_ok=True)
    remove_stale_temps(images_dir / "CLEVR_train_*.png")  # left by a killed render (never a named PNG)
    plan = label_plan(scenes, max_objects, seed)
    total = scenes * max_objects
    have = {p.name for p in images_dir.glob("CLEVR_train_*.png")}
    todo = [(i, plan[i]) for i in range(scenes)
            if any(image_name(i, k) not in have for k in range(max_objects))]
    done = total - sum(max_objects for _ in todo)
    if progress:
        progress(done, total)
    jobs = [(str(images_dir), seed, tuple(size), SUPERSAMPLE, todo[c:c + CHUNK]) for c in range(0, len(todo), CHUNK)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    if workers == 1:
        results = map(_render_chunk, jobs)
        _drain(results, jobs, done, total, progress, max_objects)
    else:
        # fork: no re-import of __main__ (works from notebooks and stdin); the workers use numpy and PIL only
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(workers, mp_context=get_context(method), initializer=_worker_init)
        try:
            _drain(pool.map(_render_chunk, jobs), jobs, done, total, progress, max_objects)
        except BaseException:  # Ctrl-C or a failure: drop the queued scenes at once (finished PNGs are kept)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    _write_json_files(out, plan, seed)
    atomic_write_text(out / MARKER, json.dumps({"images": total}))
    return out


def _drain(results, jobs, done: int, total: int, progress, max_objects: int) -> None:
    for job, _ in zip(jobs, results):
        done += len(job[4]) * max_objects
        if progress:
            progress(done, total)


def _write_json_files(out: Path, plan: list[list[str]], seed: int) -> None:
    train = {image_name(i, k): labels[: k + 1] for i, labels in enumerate(plan) for k in range(len(labels))}
    atomic_write_text(out / "objects.json", json.dumps(L.LABEL_TO_INDEX, indent=1))
    atomic_write_text(out / "test.json", json.dumps(split_conditions(plan, TEST_SIZES, seed, 0x7E57, True)))
    atomic_write_text(out / "new_test.json",
                      json.dumps(split_conditions(plan, NEW_TEST_SIZES, seed, 0x4E57, False)))
    atomic_write_text(out / "train.json", json.dumps(train, indent=0))


def iclevr_home() -> Path:
    """The cache folder of the project: $ICLEVR_HOME, default ~/.cache/iclevr."""
    return Path(os.environ.get("ICLEVR_HOME") or Path.home() / ".cache" / "iclevr")


def ensure_kit(name: str, spec: dict, console=None, workers: int | None = None) -> Path:
    """The embedded kit `name` under $ICLEVR_HOME/kits, rendered (or resumed) on first use."""
    out = iclevr_home() / "kits" / name
    if is_complete(out):
        return out
    images = spec["scenes"] * spec["max_objects"]
    w, h = spec["size"]
    if console is None:
        return write_kit(out, workers=workers, **spec)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    console.print(f"[bold]No --data-dir given:[/] rendering the embedded kit '{name}' ({images:,} images, "
                  f"{w}x{h}) into {out} (once; set ICLEVR_HOME to move it; an interrupted render resumes)")
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("rendering", total=images)
        write_kit(out, workers=workers, progress=lambda n, total: bar.update(task, completed=n), **spec)
    return out


def ensure_default_kit(console=None) -> Path:
    """The embedded default kit (6,003 scenes, 18,009 images), rendered into $ICLEVR_HOME on first use."""
    return ensure_kit("default-v1", DEFAULT_KIT, console)


def ensure_mini_kit(console=None) -> Path:
    """A small fixed kit (200 scenes, 600 images at 64x48) for tests and quick demos."""
    return ensure_kit("mini-v1", MINI_KIT, console, workers=1)


def parse_size(text: str) -> tuple[int, int]:
    """'128x96' -> (128, 96); a clear UserError otherwise."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise UserError(f'--size "{text}" is not WIDTHxHEIGHT, e.g. 128x96') from None
    if min(w, h) < 8 or max(w, h) > 4096:
        raise UserError(f"--size {w}x{h} is out of range (8 to 4096 pixels a side)")
    if not math.isclose(w / h, 4 / 3, rel_tol=0.02):
        raise UserError(f"--size {w}x{h} is not 4:3 like the course frames (e.g. 128x96, 160x120, 320x240)")
    return w, h


def default_out(scenes: int, max_objects: int, size: tuple[int, int], seed: int) -> Path:
    """Where `data synth` writes without --out: the embedded default kit, if the settings are its own."""
    if (scenes, max_objects, tuple(size), seed) != tuple(DEFAULT_KIT[k] if k != "size" else tuple(DEFAULT_KIT[k])
                                                        for k in ("scenes", "max_objects", "size", "seed")):
        raise UserError("give --out DIR for a kit with non-default settings (without --out, `data synth` "
                        "renders the embedded default kit)")
    return iclevr_home() / "kits" / "default-v1"
