"""How fast the embedded world renders: images/s and the time of the full default kit (18,009 images).

    python benchmarks/render_speed.py            # samples; extrapolates the full-kit time
    python benchmarks/render_speed.py --full     # also renders the whole default kit once and times it

Each measurement renders real kits with `iclevr.data.synth.write_kit` (placement with the visibility checks,
ray casting, PNG encoding, atomic writes) into a temporary folder. Results: a table on stdout and
benchmarks/results/render_speed.json. The machine may be shared: each row also records the CPU time
(this process and its workers) and the 1-minute load average, so a contended wall time can be told apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from iclevr.data.synth import DEFAULT_KIT, write_kit

RESULTS = Path(__file__).parent / "results" / "render_speed.json"
REPO = Path(__file__).resolve().parents[1]  # result files name paths relative to it (iclevr.fileio.portable)


def time_kit(scenes: int, size: tuple[int, int], workers: int, max_objects: int = 3) -> dict:
    """Render a kit of `scenes` scenes into a temporary folder; images/s and seconds."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cpu0, start = _cpu_seconds(), time.perf_counter()
        write_kit(Path(tmp) / "kit", scenes=scenes, max_objects=max_objects, size=size, seed=0, workers=workers)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    images = scenes * max_objects
    return {
        "size": f"{size[0]}x{size[1]}",
        "workers": workers,
        "scenes": scenes,
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_image": round(1000 * cpu / images, 2),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    """Run the measurements, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also time a full default-kit render once")
    parser.add_argument("--scenes", type=int, default=200, help="scenes per default-size sample")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    full_images = DEFAULT_KIT["scenes"] * DEFAULT_KIT["max_objects"]
    runs = [
        time_kit(args.scenes, DEFAULT_KIT["size"], 1),
        time_kit(args.scenes, DEFAULT_KIT["size"], cores),
        time_kit(max(args.scenes // 10, 4), (320, 240), 1),
        time_kit(max(args.scenes // 5, 8), (320, 240), cores),
    ]
    for r in runs:
        r["full_kit_minutes_extrapolated"] = round(full_images / r["images_per_s"] / 60, 2)
        r["full_kit_minutes_from_cpu_time"] = round(full_images * r["cpu_ms_per_image"] / 1000 / cores / 60, 2)
    full = time_kit(DEFAULT_KIT["scenes"], DEFAULT_KIT["size"], cores) if args.full else None
    table = Table(title=f"render speed ({cores} cores, {platform.processor() or platform.machine()})")
    for col in ("frame", "workers", "images", "seconds", "images/s", "CPU ms/image", "load", "full kit (min)"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            r["size"],
            str(r["workers"]),
            str(r["images"]),
            f"{r['seconds']:.1f}",
            f"{r['images_per_s']:.1f}",
            f"{r['cpu_ms_per_image']:.1f}",
            f"{r['load_before']:.1f}",
            f"{r['full_kit_minutes_extrapolated']:.1f} (extrapolated)",
        )
    if full:
        table.add_row(
            full["size"],
            str(full["workers"]),
            str(full["images"]),
            f"{full['seconds']:.1f}",
            f"{full['images_per_s']:.1f}",
            f"{full['cpu_ms_per_image']:.1f}",
            f"{full['load_before']:.1f}",
            f"[bold]{full['seconds'] / 60:.2f} (measured)[/]",
        )
    Console(width=120).print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "cores": cores,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "samples": runs,
        "full_default_kit": full,
    }
    from iclevr.fileio import portable

    RESULTS.write_text(json.dumps(portable(report, REPO), indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
