"""Seconds per optimizer step and images/s of a preset's training step on this machine.

    python benchmarks/train_speed.py --preset tiny --batch-size 64 --steps 8
    python benchmarks/train_speed.py --preset seed --batch-size 32 --steps 2 --threads 1 2

Each step is the real one of `iclevr.train` (diffusion_loss on random uint8-range images with random
labels, backward, gradient clipping, AdamW step, EMA update) on the CPU, timed after one warm-up step.
The machine may be shared: each row records the CPU time of this process and the 1-minute load average.
Results: a line per setting on stdout and benchmarks/results/train_speed.json (appended).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from iclevr.ema import EMA
from iclevr.model import build_model, count_parameters
from iclevr.schedules import make_scheduler
from iclevr.settings import TrainSettings, resolve
from iclevr.train import diffusion_loss

RESULTS = Path(__file__).parent / "results" / "train_speed.json"


def measure(preset: str, batch: int, steps: int, threads: int) -> dict:
    """Time `steps` training steps (after one warm-up step) of `preset` at `batch` images per step."""
    torch.set_num_threads(threads)
    settings = resolve(TrainSettings, preset=preset)
    torch.manual_seed(0)
    model = build_model(settings.model)
    ema = EMA(model, 0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    alpha_bar = make_scheduler(settings.schedule).alphas_cumprod.float()
    S = settings.model.sample_size
    x0 = torch.rand(batch, 3, S, S) * 2 - 1  # (B, 3, S, S)
    y = (torch.rand(batch, 24) < 0.1).float()  # (B, 24)
    g = torch.Generator().manual_seed(0)

    def step(i: int) -> None:
        loss = diffusion_loss(model, x0, y, alpha_bar, settings, g)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model, i)

    step(0)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(i + 1)
    wall, cpu = (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps
    return {"preset": preset, "params_M": round(count_parameters(model) / 1e6, 2), "resolution": S,
            "batch": batch, "threads": threads, "steps": steps, "s_per_step": round(wall, 3),
            "images_per_s": round(batch / wall, 1), "cpu_s_per_step": round(cpu, 3),
            "load_avg_1min": round(os.getloadavg()[0], 2), "cores": os.cpu_count(), "torch": torch.__version__,
            "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def main() -> None:
    """Parse arguments, measure, print and append the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    args = p.parse_args()
    rows = [measure(args.preset, args.batch_size, args.steps, t) for t in args.threads]
    for r in rows:
        print(json.dumps(r))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps(old + rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
