"""Peak memory of sampling many conditions in one call: `iclevr sample` and `iclevr eval` at 100 and 1,000.

Each case runs in a fresh subprocess on the CPU with a randomly initialised `tiny` model (memory does not
depend on the weights) and a short sampler (ddim, 1 step, guidance 2, batches of 64 by default; a step's UNet
intermediates are freed before the next, so the step count changes the time, not the peak):

  sample  iclevr.generate.run_sample, the core of `iclevr sample --labels-file F --save-individual`
  eval    iclevr.evaluation.run.evaluate, the core of `iclevr eval --split test` (one seed, the packaged evaluator)

Both draw through iclevr.sampling.sample_batches. Peak RSS is the kernel's high-water mark (VmHWM), reset just
before the call (/proc/self/clear_refs), so imports do not hide it; growth = peak - RSS before the call, which
includes loading the weights (and the evaluator), the same at every count. The images a call keeps by design
are set beside it: `sample` keeps every image as uint8 64x64 for the grid (12 KiB each), `eval` keeps each
seed's images as float 64x64 for scoring (48 KiB each). Each case is repeated (--repeats, interleaved) and
the median reported with the range, since the peak of the same case varies by tens of MiB between processes.

Each case runs under two allocator settings: glibc's default, whose mmap threshold rises after large frees so
that later batch buffers come from a heap that fragments and is not given back (the peak creeps up over the
first tens of batches), and MALLOC_MMAP_THRESHOLD_=131072, a fixed threshold under which every buffer over
128 KiB is returned to the system when freed; the second isolates what the code itself holds.

    python benchmarks/sample_memory.py [--counts 100 1000] [--steps 1] [--batch-size 64] [--repeats 3]
                                       [--allocators default fixed]

Results go to benchmarks/results/sample_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "sample_memory.json"
REPO = Path(__file__).resolve().parents[1]  # result files name paths relative to it (iclevr.fileio.portable)
ALLOCATORS = {"default": {}, "fixed": {"MALLOC_MMAP_THRESHOLD_": "131072"}}  # environment of the case process
COMMANDS = ("sample", "eval")
IMAGE_BYTES = {"sample": 3 * 64 * 64, "eval": 3 * 64 * 64 * 4}  # per image kept: uint8 grid / float scoring


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", type=int, nargs="+", default=[100, 1000], help="Numbers of conditions.")
    p.add_argument("--commands", nargs="+", default=list(COMMANDS), choices=COMMANDS, help="What to measure.")
    p.add_argument("--sampler", default="ddim", help="Sampler (memory is per batch, whatever the sampler).")
    p.add_argument("--steps", type=int, default=1, help="Sampler steps (few: memory does not grow with them).")
    p.add_argument("--batch-size", type=int, default=64, help="Images per UNet batch (sampler.batch_size).")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each case.")
    p.add_argument("--repeats", type=int, default=3, help="Fresh processes per case (median reported).")
    p.add_argument(
        "--allocators",
        nargs="+",
        default=list(ALLOCATORS),
        choices=ALLOCATORS,
        help="glibc allocator settings to run each case under (module docstring).",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results file.")
    p.add_argument("--child", nargs=3, metavar=("COMMAND", "N", "WORKDIR"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def status_mib(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def prepare(work: Path, counts: list[int], args) -> None:
    """Write the random-init tiny weights, a conditions file and a data folder (test.json) per count."""
    import torch
    from sample_speed import course_like_conditions

    from iclevr.model import build_model
    from iclevr.settings import ModelSettings, SamplerSettings, ScheduleSettings, load_preset
    from iclevr.weights import save_weights

    preset = load_preset("tiny")
    torch.manual_seed(0)
    model_cfg = ModelSettings(**preset["model"])
    save_weights(
        build_model(model_cfg),
        work / "tiny.safetensors",
        model_cfg=model_cfg,
        schedule_cfg=ScheduleSettings(**preset.get("schedule", {})),
        sampler_cfg=SamplerSettings(sampler=args.sampler, steps=args.steps),
        preset="tiny",
    )
    for n in counts:
        text = json.dumps(course_like_conditions(n))
        (work / f"conditions-{n}.json").write_text(text)
        (work / f"data-{n}").mkdir()
        (work / f"data-{n}" / "test.json").write_text(text)


def child(command: str, n: int, work: Path, args) -> dict:
    """Run one case in this process and measure it (the parent starts a fresh process per case)."""
    import torch

    torch.set_num_threads(args.threads)
    import diffusers  # noqa: F401 - heavy imports before the measurement, not inside it
    import torchvision.models  # noqa: F401
    from PIL import Image  # noqa: F401

    from iclevr.evaluation.evaluator import packaged_evaluator_path
    from iclevr.evaluation.run import EvalSettings, evaluate
    from iclevr.generate import SampleSettings, run_sample
    from iclevr.settings import SamplerSettings

    sampler = SamplerSettings(
        sampler=args.sampler, steps=args.steps, guidance_scale=2.0, batch_size=args.batch_size, device="cpu"
    )
    if command == "sample":
        settings = SampleSettings(
            checkpoint=work / "tiny.safetensors",
            labels_file=work / f"conditions-{n}.json",
            sampler=sampler,
            out=work / f"sample-{n}" / "grid.png",
            save_individual=True,
        )
        call = lambda: run_sample(settings)  # noqa: E731
    else:
        settings = EvalSettings(
            checkpoint=work / "tiny.safetensors",
            split="test",
            data_dir=work / f"data-{n}",
            evaluator=packaged_evaluator_path(),
            seeds=[0],
            sampler=sampler,
            out=work / f"eval-{n}",
        )
        call = lambda: evaluate(settings)  # noqa: E731
    before = status_mib("VmRSS")
    exact = reset_peak()
    began = time.perf_counter()
    call()
    seconds = time.perf_counter() - began
    peak = status_mib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kept = n * IMAGE_BYTES[command] / 2**20
    return {
        "command": command,
        "conditions": n,
        "rss_before_mib": round(before, 1),
        "peak_mib": round(peak, 1),
        "growth_mib": round(peak - before, 1),
        "kept_images_mib": round(kept, 1),
        "growth_beyond_kept_mib": round(peak - before - kept, 1),
        "seconds": round(seconds, 2),
        "peak_source": "VmHWM reset before the call" if exact else "ru_maxrss (monotone, includes imports)",
    }


def run_case(command: str, n: int, allocator: str, work: Path, args) -> dict:
    """Run one case in a fresh Python process under the allocator setting; returns its measurement."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        command,
        str(n),
        str(work),
        "--sampler",
        args.sampler,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ]
    env = {**os.environ, **ALLOCATORS[allocator]}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"case {command} {n} failed:\n{done.stderr[-3000:]}")
    return {"allocator": allocator, **json.loads(done.stdout.strip().splitlines()[-1])}


def summarise(runs: list[dict]) -> dict:
    """One row per case: the numbers of the median run, the median and range of the growth, and every run."""
    import statistics

    growths = [m["growth_mib"] for m in runs]
    median = min(runs, key=lambda m: abs(m["growth_mib"] - statistics.median(growths)))
    return {
        **median,
        "growth_mib": round(statistics.median(growths), 1),
        "growth_beyond_kept_mib": round(statistics.median(growths) - median["kept_images_mib"], 1),
        "growth_range_mib": [min(growths), max(growths)],
        "runs": runs,
    }


def main(argv=None) -> int:
    """Run every case, print the table, write the JSON."""
    args = parse_args(argv)
    if args.child:
        command, n, work = args.child
        print(json.dumps(child(command, int(n), Path(work), args)))
        return 0
    import torch

    from iclevr.fileio import write_result_json

    with tempfile.TemporaryDirectory(prefix="iclevr-memory-") as tmp:
        work = Path(tmp)
        prepare(work, args.counts, args)
        runs: dict[tuple[str, str, int], list[dict]] = {}
        cases = [(a, c, n) for a in args.allocators for c in args.commands for n in args.counts]
        for r in range(args.repeats):  # interleaved, so a change in machine load touches every case alike
            for case in cases:
                m = run_case(case[1], case[2], case[0], work, args)
                runs.setdefault(case, []).append(m)
                print(
                    f"  {' '.join(map(str, case))} (run {r + 1}/{args.repeats}): peak {m['peak_mib']:.0f} MiB, "
                    f"growth {m['growth_mib']:.0f} MiB in {m['seconds']:.1f} s"
                )
    rows = [summarise(ms) for ms in runs.values()]
    print_table(rows)
    machine = (
        f"CPU {platform.processor() or platform.machine()}, {args.threads} torch thread(s), torch {torch.__version__}"
    )
    write_result_json(
        args.out,
        {
            "machine": machine,
            "model": "random-init preset tiny (32x32, outputs 64x64)",
            "sampler": {
                "sampler": args.sampler,
                "steps": args.steps,
                "guidance_scale": 2.0,
                "batch_size": args.batch_size,
            },
            "memory": "peak RSS of a fresh process per case, growth = peak - RSS before the call; "
            f"median of {args.repeats} runs",
            "allocators": {a: ALLOCATORS[a] or "glibc default" for a in args.allocators},
            "rows": rows,
        },
        base=REPO,
    )
    print(f"wrote {args.out}")
    return 0


def print_table(rows: list[dict]) -> None:
    """Print the results as a fixed-width table, then the growth from the smallest to the largest count."""
    print(
        f"\n{'allocator':9s} {'command':8s} {'conditions':>10s} {'RSS before':>10s} {'peak':>8s} {'growth':>8s} "
        f"{'range':>11s} {'kept':>6s} {'beyond kept':>11s} {'seconds':>8s}   (MiB; median of the runs)"
    )
    for r in rows:
        lo, hi = r["growth_range_mib"]
        print(
            f"{r['allocator']:9s} {r['command']:8s} {r['conditions']:10d} {r['rss_before_mib']:10.0f} "
            f"{r['peak_mib']:8.0f} {r['growth_mib']:8.0f} {f'{lo:.0f}-{hi:.0f}':>11s} {r['kept_images_mib']:6.1f} "
            f"{r['growth_beyond_kept_mib']:11.1f} {r['seconds']:8.1f}"
        )
    for allocator, command in dict.fromkeys((r["allocator"], r["command"]) for r in rows):
        mine = sorted(
            (r for r in rows if (r["allocator"], r["command"]) == (allocator, command)), key=lambda r: r["conditions"]
        )
        if len(mine) > 1:
            a, b = mine[0], mine[-1]
            print(
                f"{command}, {allocator} allocator: {a['conditions']} -> {b['conditions']} conditions: growth +"
                f"{b['growth_mib'] - a['growth_mib']:.0f} MiB, images kept +"
                f"{b['kept_images_mib'] - a['kept_images_mib']:.0f} MiB"
            )


if __name__ == "__main__":
    sys.exit(main())
