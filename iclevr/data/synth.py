"""Write rendered CLEVR-like kits in the course layout (docs/course-kit.md): `iclevr data synth`.

<out>/iclevr/CLEVR_train_<scene:06d>_<k>.png   scene built one object at a time: _k holds k+1 objects
<out>/train.json, objects.json, test.json, new_test.json, val.json (the list to tune on; data/plan.py)
<out>/kit.json                                   how the kit was made (written first, checked on resume)
<out>/.complete                                  written last: the kit is finished

Determinism: the labels of every scene come from one balanced plan drawn from the seed (data/plan.py);
scene i is placed and rendered from a generator seeded with (seed, i). So the bytes written do not depend
on the number of workers or on interruptions. Each PNG is written atomically, JSON files and the marker last;
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
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from iclevr import labels as L
from iclevr.data.plan import DEFAULT_KIT, DEFAULT_KIT_NAME, DEFAULT_SCENES, label_plan, plan_conditions
from iclevr.errors import UserError, WriteError
from iclevr.fileio import atomic_write_bytes, atomic_write_text, check_writable, remove_stale_temps
from iclevr.paths import iclevr_home
from iclevr.settings import Section

KIT_VERSION = 1
MARKER = ".complete"
MANIFEST = "kit.json"
SUPERSAMPLE = 2  # rays per pixel side: anti-aliased edges and soft shadows at any frame size
CHUNK = 8  # scenes per worker task


class SynthSettings(Section):
    """Settings of `iclevr data synth`."""

    out: Path | None = Field(None, description="Output folder; empty = the embedded default kit in $ICLEVR_HOME.")
    scenes: int = Field(
        DEFAULT_SCENES, ge=1, le=1_000_000, description="Scenes to render (images = scenes * max_objects)."
    )
    max_objects: int = Field(3, ge=1, le=10, description="Objects per finished scene (_0 ... _{K-1}).")
    size: tuple[int, int] = Field((128, 96), description="Frame width and height (4:3; 320x240 is the course's).")
    seed: int = Field(0, ge=0, description="Seed of the label plan and of every scene (scene i uses (seed, i)).")
    workers: int | None = Field(None, ge=1, description="Worker processes; empty = all cores.")

    @field_validator("size", mode="before")
    @classmethod
    def _check_size(cls, value):
        """'128x96' or (128, 96), checked like --size (4:3, 8 to 4096 pixels a side), from a flag or a file."""
        if isinstance(value, (list, tuple)) and len(value) == 2:
            value = f"{value[0]}x{value[1]}"
        return parse_size(value)


def synth(settings: SynthSettings, progress: Callable[[int, int], None] | None = None) -> Path:
    """Run `data synth`: render (or resume) the kit the settings describe; returns its folder."""
    s = settings
    out = s.out if s.out is not None else default_out(s.scenes, s.max_objects, s.size, s.seed)
    try:
        return write_kit(out, s.scenes, s.max_objects, s.size, s.seed, s.workers, progress)
    except WriteError as e:  # a full disk or a permission: every finished PNG is kept and counts on resume
        raise WriteError(
            f"{e}; the images already written are kept: once fixed, run the same command again to finish the kit"
        ) from None


def image_name(scene: int, k: int) -> str:
    """Course file name of scene `scene` with k+1 objects."""
    return f"CLEVR_train_{scene:06d}_{k}.png"


def render_scene(
    images_dir: str, scene: int, labels: list[str], seed: int, size: tuple[int, int], supersample: int = SUPERSAMPLE
) -> int:
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
    return {
        "version": KIT_VERSION,
        "scenes": scenes,
        "max_objects": max_objects,
        "size": list(size),
        "seed": seed,
        "supersample": SUPERSAMPLE,
    }


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
            raise UserError(
                f"{out} holds a kit rendered with other settings ({was}); choose another --out or delete that folder"
            )
        return
    if (out / "train.json").exists() or (out / "iclevr").exists():
        raise UserError(f"{out} already holds course data that this tool did not render; choose another --out")
    atomic_write_text(path, json.dumps(manifest, indent=1))


def write_kit(
    out: Path,
    scenes: int = DEFAULT_SCENES,
    max_objects: int = 3,
    size: tuple[int, int] = (128, 96),
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
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
    todo = [(i, plan[i]) for i in range(scenes) if any(image_name(i, k) not in have for k in range(max_objects))]
    done = total - sum(max_objects for _ in todo)
    if progress:
        progress(done, total)
    jobs = [(str(images_dir), seed, tuple(size), SUPERSAMPLE, todo[c : c + CHUNK]) for c in range(0, len(todo), CHUNK)]
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
    for split, conditions in plan_conditions(plan, seed).items():
        atomic_write_text(out / f"{split}.json", json.dumps(conditions))
    atomic_write_text(out / "train.json", json.dumps(train, indent=0))


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
    default = (DEFAULT_KIT["scenes"], DEFAULT_KIT["max_objects"], tuple(DEFAULT_KIT["size"]), DEFAULT_KIT["seed"])
    if (scenes, max_objects, tuple(size), seed) != default:
        raise UserError(
            "give --out DIR for a kit with non-default settings (without --out, `data synth` "
            "renders the embedded default kit)"
        )
    return embedded_kit_dir(DEFAULT_KIT_NAME)


def embedded_kit_dir(name: str) -> Path:
    """Where the embedded kit `name` lives: $ICLEVR_HOME/kits/<name>."""
    return iclevr_home() / "kits" / name


def is_embedded_kit(data_dir: Path | None) -> bool:
    """True for no --data-dir (the embedded default) or a folder under $ICLEVR_HOME/kits (an embedded kit named
    by its path, as `iclevr demo` passes it); False for a course kit anywhere else."""
    return data_dir is None or Path(data_dir).resolve().is_relative_to(embedded_kit_dir("").resolve())
