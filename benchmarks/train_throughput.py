"""Training throughput: our training step against a faithful seed-style loop, side by side in one process.

    python benchmarks/train_throughput.py --presets tiny small --steps 20 [--data-dir DIR] [--workers 0 2]

Both loops train the same ConditionalUNet of the preset (same initial weights, batch size, data, machine):

- seed-style (written here after the seed's description in docs/reference-config.md): a torch Dataset that opens
  every PNG
  with PIL and applies Resize((S, S)) + ToTensor + Normalize, a shuffling DataLoader (--workers worker
  processes; each value is a row), diffusers DDPMScheduler.add_noise, MSE on eps, Adam (not foreach),
  `loss.item()` every step (the seed logs every step), fp32 on CPU; on CUDA torch.autocast fp16 + GradScaler.
- ours: `iclevr.training.loop.train` itself with a step budget (timed from its own loss log, after 2 warm-up steps)
  — the uint8 training tensor decoded once (cache) and indexed in place, `diffusion_loss`, gradient
  clipping, fused AdamW, the LR schedule, the EMA update, no per-step host sync; bf16 autocast on GPUs
  that support it. Variants: `+channels_last`, `+compile` (its --channels-last and --compile settings).

The rounds alternate (seed, ours, seed, ours, ...) so that a change in machine load hits both; each
figure is the median over rounds. Peak memory: the largest resident set of this process plus its
DataLoader workers seen during the loop (sampled every 50 ms), and peak CUDA memory on a GPU.
Each row also carries the step's floating-point work (torch's FlopCounterMode over one forward + backward),
the GFLOP/s the loop achieved, and the machine's roof (an fp32 2048 x 2048 matrix product): a loop near the
roof is compute-bound, and no change to the loop around the UNet can make it much faster.
Results: a table on stdout and benchmarks/results/train_throughput.json (appended).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
REPO = Path(__file__).resolve().parents[1]  # result files name paths relative to it (iclevr.fileio.portable)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process from /proc (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """Samples RSS of this process + its children (DataLoader workers) every 50 ms; `.peak` in bytes."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _children(self) -> list[int]:
        try:
            text = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text()
            return [int(p) for p in text.split()]
        except OSError:
            return []

    def _run(self) -> None:
        while not self._stop.is_set():
            total = rss_bytes(os.getpid()) + sum(rss_bytes(c) for c in self._children())
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class SeedDataset(torch.utils.data.Dataset):
    """train.json read as the seed does: every item opens its PNG with PIL and transforms it."""

    def __init__(self, kit, resolution: int):
        from torchvision import transforms

        from iclevr.labels import encode

        self.paths = [kit.images_dir / name for name in kit.train]
        self.labels = [encode(names) for names in kit.train.values()]
        self.transform = transforms.Compose(
            [
                transforms.Resize((resolution, resolution)),
                transforms.ToTensor(),
                transforms.Normalize([0.5] * 3, [0.5] * 3),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


def seed_style(model, kit, settings, steps: int, workers: int, device) -> dict:
    """`steps` timed steps (after 2 warm-up steps) of the seed-style loop; images/s and peak memory."""
    from diffusers import DDPMScheduler

    from iclevr.schedules import scheduler_kwargs

    S, B = settings.model.sample_size, settings.train.batch_size
    loader = torch.utils.data.DataLoader(
        SeedDataset(kit, S),
        batch_size=B,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    scheduler = DDPMScheduler(**scheduler_kwargs(settings.schedule.name, settings.schedule.num_train_timesteps))
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, foreach=False)
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    losses, it, t0 = [], iter(loader), 0.0
    with PeakMemory() as mem:
        for i in range(steps + 2):
            if i == 2:
                t0 = _sync_time(device)
            x0, y = next(it)
            x0, y = x0.to(device), y.to(device)  # (B, 3, S, S) in [-1, 1], (B, 24)
            eps = torch.randn_like(x0)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (B,), device=device)
            x_t = scheduler.add_noise(x0, eps, t)
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                loss = torch.nn.functional.mse_loss(model(x_t, t, y), eps)
            opt.zero_grad()
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            losses.append(loss.item())  # the seed logs the loss of every step
        wall = _sync_time(device) - t0
    del it, loader
    return {"images_per_s": steps * B / wall, "s_per_step": wall / steps, "peak_mem_MiB": mem.peak / 2**20}


def ours(settings, data_dir: Path, steps: int, work: Path) -> dict:
    """`steps` timed steps (after 2 warm-up steps) of `iclevr train` itself; images/s from its own log."""
    from rich.console import Console

    from iclevr.fileio import read_jsonl
    from iclevr.training.loop import train

    train_cfg = settings.train.model_copy(
        update={"max_steps": steps + 2, "log_every": 2, "checkpoint_every": 0, "sample_grids": "off"}
    )
    run_settings = settings.model_copy(
        update={"train": train_cfg, "out": work, "data": settings.data.model_copy(update={"data_dir": data_dir})}
    )
    with PeakMemory() as mem:
        run = train(run_settings, console=Console(quiet=True), overwrite=True)
    logs = read_jsonl(run / "metrics.jsonl")
    wall = logs[-1]["wall_s"] - logs[0]["wall_s"]  # from the end of step 2 to the end of the last step
    B = settings.train.batch_size
    return {"images_per_s": steps * B / wall, "s_per_step": wall / steps, "peak_mem_MiB": mem.peak / 2**20}


def step_gflop(model, settings, device) -> float:
    """Floating-point work of one training step (UNet forward + backward at the preset's batch), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    from iclevr.labels import NUM_CLASSES

    B, S = settings.train.batch_size, settings.model.sample_size
    x, y = torch.randn(B, 3, S, S, device=device), torch.zeros(B, NUM_CLASSES, device=device)
    t = torch.randint(0, 1000, (B,), device=device)
    with FlopCounterMode(display=False) as counter:
        model(x, t, y).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def matmul_gflops(device, n: int = 2048, reps: int = 10) -> float:
    """The machine's fp32 roof: GFLOP/s of an n x n matrix product (what the fastest kernels reach)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    t0 = _sync_time(device)
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (_sync_time(device) - t0) / 1e9


def _sync_time(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def bench_preset(preset: str, args, kit, device) -> list[dict]:
    """All rows of one preset: seed-style per worker count, ours and its variants; medians over rounds."""
    from iclevr.model import build_model, count_parameters
    from iclevr.settings import TrainSettings, resolve

    over = {"train": {"batch_size": args.batch_size}} if args.batch_size else {}
    over.setdefault("train", {}).update(device=str(device), max_minutes=None, epochs=None)  # a step budget only
    if device.type == "cuda":
        over["train"]["mixed_precision"] = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    settings = resolve(TrainSettings, preset=preset, overrides=over)
    torch.manual_seed(settings.train.seed)
    model = build_model(settings.model)
    init = model.state_dict()  # the initial weights `iclevr train` starts from too (same seed)
    gflop = step_gflop(model.to(device), settings, device)
    roof = matmul_gflops(device)
    variants = {f"seed-style, {w} workers": ("seed", w) for w in args.workers}
    variants.update({"ours": ("ours", {}), "ours +channels_last": ("ours", {"channels_last": True})})
    if args.compile:
        variants["ours +compile"] = ("ours", {"compile": True})
    results: dict[str, list[dict]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, (kind, extra) in variants.items():
            if kind == "seed":
                model.load_state_dict(init)
                results[name].append(seed_style(model.train(), kit, settings, args.steps, extra, device))
            else:
                s = settings.model_copy(update={"train": settings.train.model_copy(update=extra)})
                with tempfile.TemporaryDirectory() as work:
                    results[name].append(ours(s, kit.data_dir, args.steps, Path(work) / "run"))
    base = max(statistics.median(r["images_per_s"] for r in results[k]) for k in results if k.startswith("seed"))
    rows = []
    for name, runs in results.items():
        ips = statistics.median(r["images_per_s"] for r in runs)
        rows.append(
            {
                "preset": preset,
                "loop": name,
                "params_M": round(count_parameters(model) / 1e6, 2),
                "resolution": settings.model.sample_size,
                "batch": settings.train.batch_size,
                "images_per_s": round(ips, 1),
                "s_per_step": round(statistics.median(r["s_per_step"] for r in runs), 3),
                "ratio_vs_best_seed_style": round(ips / base, 2),
                "gflop_per_step": round(gflop, 1),
                "achieved_gflops": round(gflop * ips / settings.train.batch_size, 1),
                "matmul_gflops": round(roof, 1),
                "peak_mem_MiB": round(max(r["peak_mem_MiB"] for r in runs)),
                "rounds": args.rounds,
                "steps": args.steps,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        )
    return rows


def main() -> None:
    """Parse arguments, run every preset, print the table and append the JSON."""
    from rich.console import Console
    from rich.table import Table

    from iclevr.data.course import load_kit
    from iclevr.data.kits import resolve_data_dir
    from iclevr.device import pick_device

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--steps", type=int, default=20, help="Timed steps per round and loop.")
    p.add_argument("--rounds", type=int, default=2, help="Alternating rounds; the median is reported.")
    p.add_argument("--batch-size", type=int, default=None, help="Default: the preset's.")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="Seed-style DataLoader workers.")
    p.add_argument("--compile", action="store_true", help="Also time ours with torch.compile.")
    p.add_argument("--data-dir", type=Path, default=None, help="Course kit (default: the embedded kit).")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = pick_device(args.device)
    kit = load_kit(resolve_data_dir(args.data_dir, Console(stderr=True)))
    rows = [r for preset in args.presets for r in bench_preset(preset, args, kit, device)]
    table = Table(title=f"training throughput on {device} ({os.cpu_count()} cores)")
    for col in ("preset", "loop", "batch", "images/s", "s/step", "ratio", "GFLOP/s (matmul roof)", "peak MiB"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["preset"],
            r["loop"],
            str(r["batch"]),
            f"{r['images_per_s']:.1f}",
            f"{r['s_per_step']:.3f}",
            f"{r['ratio_vs_best_seed_style']:.2f}x",
            f"{r['achieved_gflops']:.0f} ({r['matmul_gflops']:.0f})",
            str(r["peak_mem_MiB"]),
        )
    Console(width=max(Console().width, 130)).print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    from iclevr.fileio import portable

    RESULTS.write_text(json.dumps(portable(old + rows, REPO), indent=1) + "\n")


if __name__ == "__main__":
    main()
