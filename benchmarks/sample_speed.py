"""Sampling speed: the seed's sampler against ours, on one model and the same 32 conditions.

The seed's sampler (reimplemented here as it was written): 1000 DDPM steps, TWO separate UNet forward
passes per step (conditional, then null condition), fp32, one global random generator. Ours:
iclevr.sampling.sample, one batched forward pass of 2B per step under autocast where the device supports
it, with dpmpp-sde (the default) at 20 steps, dpmpp at 10/20/25/50 steps and ddim at 50.

    python benchmarks/sample_speed.py [CHECKPOINT] [--ddpm-steps 100] [--device auto] [--score]

With no checkpoint it uses the newest run, or a randomly initialised model of --preset (default tiny),
saying so: random weights time exactly like trained ones. `--ddpm-steps N` (< 1000) times the first N
of the seed's 1000 steps and extrapolates linearly (every step costs the same two forward passes); the
output marks such rows as extrapolated. Results go to benchmarks/results/sample_speed.json.
"""

from __future__ import annotations

import argparse
import platform
import random
import resource
import sys
import time
from pathlib import Path

import torch

from iclevr.settings import ModelSettings, SamplerSettings, ScheduleSettings

OURS = [("dpmpp-sde", 20), ("dpmpp", 10), ("dpmpp", 20), ("dpmpp", 25), ("dpmpp", 50), ("ddim", 50)]
RESULTS = Path(__file__).parent / "results" / "sample_speed.json"
REPO = Path(__file__).resolve().parents[1]  # result files name paths relative to it (iclevr.fileio.portable)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", type=Path, help="Run folder or .safetensors (default: newest run).")
    p.add_argument("--preset", default="tiny", help="Model preset when no checkpoint exists (random init).")
    p.add_argument("--random-init", action="store_true", help="Ignore checkpoints; time a random --preset model.")
    p.add_argument("--labels-file", type=Path, help="JSON list of 32 conditions (e.g. the course test.json).")
    p.add_argument("--ddpm-steps", type=int, default=1000, help="Seed-sampler steps to time (extrapolated to 1000).")
    p.add_argument("--guidance-scale", type=float, default=2.0, help="Guidance scale s (the seed's: 2).")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--score", action="store_true", help="Also score the images with iclevr.evaluation.run.")
    p.add_argument("--evaluator", type=Path, help="Evaluator file for --score.")
    p.add_argument(
        "--data-dir",
        type=Path,
        help="Course data folder: its test.json conditions (unless --labels-file) and checkpoint.pth evaluator.",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results file.")
    args = p.parse_args(argv)
    args.cache = {}
    return args


def course_like_conditions(n: int = 32, seed: int = 0) -> list[list[str]]:
    """n fixed conditions shaped like test.json (1, 2, 3 objects in turn; 72 objects for n = 32)."""
    from iclevr.labels import LABELS

    rng = random.Random(seed)
    sizes = [1, 2, 3] * (n // 3) + [2, 3][: n % 3]
    return [rng.sample(LABELS, k) for k in sizes]


def load_model(args, device):
    """(model, schedule, description): the checkpoint, the newest run, or a random-init preset model."""
    from iclevr.model import build_model
    from iclevr.settings import load_preset
    from iclevr.weights import load_weights, newest_run, resolve_checkpoint

    path = args.checkpoint or (None if args.random_init else newest_run())
    if path is not None:
        model, info = load_weights(resolve_checkpoint(path), device)
        return model, info.schedule, f"checkpoint {info.path} (step {info.step})"
    preset = load_preset(args.preset)
    torch.manual_seed(0)
    model = build_model(ModelSettings(**preset["model"])).to(device).eval()
    schedule = ScheduleSettings(**preset.get("schedule", {}))
    print(f"no checkpoint: timing a randomly initialised `{args.preset}` model (speed does not depend on weights)")
    return model, schedule, f"random-init preset {args.preset}"


def sync(device) -> None:
    """Wait for queued GPU work so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_sampler(model, y, schedule, scale: float, device, n_steps: int) -> torch.Tensor:
    """The seed's loop: DDPMScheduler 1000 steps, conditional and null passes run separately, fp32."""
    from iclevr.schedules import make_scheduler

    scheduler = make_scheduler(schedule)
    scheduler.set_timesteps(schedule.num_train_timesteps)
    S = model.cfg.sample_size
    x = torch.randn(y.shape[0], 3, S, S, device=device)  # (B, 3, S, S)
    null = torch.zeros_like(y)
    with torch.no_grad():
        for t in scheduler.timesteps[:n_steps]:
            tt = torch.full((y.shape[0],), int(t), device=device, dtype=torch.long)
            eps_c = model(x, tt, y)
            eps_u = model(x, tt, null)
            eps = eps_u + scale * (eps_c - eps_u)
            x = scheduler.step(eps, t, x).prev_sample
    return x.clamp(-1, 1).cpu()


def peak_memory_mb(device) -> float:
    """Peak GPU memory allocated since the last reset, or the process's peak RSS on CPU (monotone)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(fn, device):
    """(result, seconds, peak MiB) of fn()."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    began = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - began, peak_memory_mb(device)


def score(images, y, args, device) -> float | None:
    """The course metric on (N, 3, 64, 64) images with `iclevr eval`'s evaluator (--evaluator, the data
    folder's checkpoint.pth, or the project's own evaluator)."""
    try:
        from iclevr.evaluation.fit import load_evaluator
        from iclevr.evaluation.metric import accuracy
    except ImportError:
        print("--score: iclevr.evaluation is not available; accuracy column left empty")
        return None
    if "evaluator" not in args.cache:
        args.cache["evaluator"] = load_evaluator(args.evaluator, args.data_dir, device)
    hits, total = accuracy(args.cache["evaluator"].scores(images), y.cpu())
    return hits / total


def machine(device) -> str:
    """One line describing where this ran."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )


def main(argv=None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    from iclevr.device import pick_device
    from iclevr.fileio import write_result_json
    from iclevr.generate import read_label_file
    from iclevr.images import to_output_size
    from iclevr.labels import encode_many
    from iclevr.sampling import sample

    args = parse_args(argv)
    device = pick_device(args.device)
    model, schedule, what = load_model(args, device)
    if args.labels_file or args.data_dir:
        conditions = read_label_file(args.labels_file or args.data_dir / "test.json")
    else:
        conditions = course_like_conditions()
        print("conditions: 32 fixed ones shaped like test.json (pass --labels-file or --data-dir for the real ones)")
    y = encode_many(conditions).to(device)  # (32, 24)
    n = len(conditions)
    print(
        f"model: {what}; {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters at "
        f"{model.cfg.sample_size}x{model.cfg.sample_size}; {n} conditions; guidance {args.guidance_scale:g}"
    )
    print(f"machine: {machine(device)}")
    with torch.no_grad():  # warm-up (kernel selection, allocator) outside every timing
        model(
            torch.zeros(2 * n, 3, model.cfg.sample_size, model.cfg.sample_size, device=device),
            torch.zeros(2 * n, dtype=torch.long, device=device),
            torch.cat([y, y]),
        )

    T = schedule.num_train_timesteps
    k = min(args.ddpm_steps, T)
    x, sec, mem = timed(lambda: seed_sampler(model, y, schedule, args.guidance_scale, device, k), device)
    extrapolated = k < T
    rows = [
        {
            "sampler": "seed: ddpm, 2 passes, fp32",
            "steps": T,
            "forward_passes": 2 * T,
            "seconds": sec * T / k,
            "timed_steps": k,
            "extrapolated": extrapolated,
            "peak_mib": mem,
            "accuracy": score(to_output_size(x), y, args, device) if args.score and not extrapolated else None,
        }
    ]
    for name, steps in OURS:
        settings = SamplerSettings(sampler=name, steps=steps, guidance_scale=args.guidance_scale, batch_size=n)
        x, sec, mem = timed(lambda s=settings: sample(model, y, schedule=schedule, sampler=s, device=device), device)
        rows.append(
            {
                "sampler": f"ours: {name}, batched CFG",
                "steps": steps,
                "forward_passes": steps,
                "seconds": sec,
                "timed_steps": steps,
                "extrapolated": False,
                "peak_mib": mem,
                "accuracy": score(to_output_size(x), y, args, device) if args.score else None,
            }
        )
    base = rows[0]["seconds"]
    for r in rows:
        r["images_per_s"], r["speedup"] = n / r["seconds"], base / r["seconds"]
    print_table(rows, device)
    write_result_json(
        args.out,
        {
            "machine": machine(device),
            "device": str(device),
            "model": what,
            "parameters": sum(p.numel() for p in model.parameters()),
            "resolution": model.cfg.sample_size,
            "images": n,
            "guidance_scale": args.guidance_scale,
            "memory": "peak GPU allocated" if device.type == "cuda" else "process peak RSS (monotone)",
            "rows": rows,
        },
        base=REPO,
    )
    print(f"wrote {args.out}")
    return 0


def print_table(rows: list[dict], device) -> None:
    """Print the results as a fixed-width table."""
    mem = "peak GPU MiB" if device.type == "cuda" else "peak RSS MiB"
    print(
        f"\n{'sampler':30s} {'steps':>5s} {'UNet calls':>10s} {'s/step':>7s} {'seconds':>9s} {'img/s':>7s} "
        f"{'speed-up':>8s} {mem:>12s} {'accuracy':>8s}"
    )
    for r in rows:
        note = f"  (timed {r['timed_steps']} steps, extrapolated)" if r["extrapolated"] else ""
        acc = f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "-"
        print(
            f"{r['sampler']:30s} {r['steps']:5d} {r['forward_passes']:10d} {r['seconds'] / r['steps']:7.3f} "
            f"{r['seconds']:9.2f} {r['images_per_s']:7.2f} {r['speedup']:7.1f}x {r['peak_mib']:12.0f} "
            f"{acc:>8s}{note}"
        )


if __name__ == "__main__":
    sys.exit(main())
