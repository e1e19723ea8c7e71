"""Sampling cost per image and training cost per step of two presets, side by side.

    python benchmarks/sample_ratio.py --presets tiny tiny-tokens --rounds 3 --threads 1

Both models are randomly initialised (random weights time exactly like trained ones) and draw the same 32
conditions (the embedded kit's test list) with each preset's stored sampler (tiny: dpmpp-sde 20 steps;
tiny-tokens: dpmpp-sde 14 steps; each step one batched forward pass of 2B with classifier-free guidance). The
presets alternate round by round in one process, so machine load hits both alike; the ratio of the medians is
the number to quote. A training step (forward, backward and AdamW step on a batch of 32 random images of the
preset's size and 1-3 objects each) is timed the same way. Results: benchmarks/results/sample_ratio.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "sample_ratio.json"
REPO = Path(__file__).resolve().parents[1]  # result files name paths relative to it (iclevr.fileio.portable)


def _train_step_seconds(model, settings, rounds: int) -> list[float]:
    """Seconds of `rounds` training steps (after one warm-up step) on a random batch of 32."""
    size, gen = settings.model.sample_size, torch.Generator().manual_seed(0)
    x, t = torch.randn(32, 3, size, size, generator=gen), torch.randint(0, 1000, (32,), generator=gen)
    y = torch.zeros(32, 24)
    for i in range(32):
        y[i, torch.randperm(24, generator=gen)[: 1 + i % 3]] = 1
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    out = []
    for i in range(rounds + 1):
        t0 = time.perf_counter()
        loss = model(x, t, y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            out.append(time.perf_counter() - t0)
    model.eval()
    return out


def main() -> None:
    """Time each preset's default sampler per image, alternating, and write the medians and their ratio."""
    from iclevr.data.course import load_conditions
    from iclevr.labels import encode_many
    from iclevr.model import build_model
    from iclevr.sampling import sample
    from iclevr.settings import TrainSettings, resolve

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs=2, default=["tiny", "tiny-tokens"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    y = encode_many(load_conditions(None, splits=("test",))["test"])  # (32, 24)
    models = {}
    for name in args.presets:
        settings = resolve(TrainSettings, preset=name)
        torch.manual_seed(0)
        models[name] = (build_model(settings.model).eval(), settings)
    seconds: dict[str, list[float]] = {name: [] for name in args.presets}
    for _ in range(args.rounds):
        for name, (model, settings) in models.items():
            t0 = time.perf_counter()
            sample(model, y, schedule=settings.schedule, sampler=settings.sampler)
            seconds[name].append((time.perf_counter() - t0) / len(y))
    step_s = {name: _train_step_seconds(model, settings, args.rounds) for name, (model, settings) in models.items()}
    median = {name: statistics.median(s) for name, s in seconds.items()}
    a, b = args.presets
    row = {
        "presets": args.presets,
        "images": len(y),
        "sampler": {n: s.sampler.model_dump() for n, (_, s) in models.items()},
        "seconds_per_image": {n: [round(x, 4) for x in s] for n, s in seconds.items()},
        "median_s_per_image": {n: round(m, 4) for n, m in median.items()},
        f"ratio_{b}_over_{a}": round(median[b] / median[a], 3),
        "median_train_s_per_step": {n: round(statistics.median(t), 3) for n, t in step_s.items()},
        f"train_step_ratio_{b}_over_{a}": round(statistics.median(step_s[b]) / statistics.median(step_s[a]), 3),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.node()} {platform.machine()}",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from iclevr.fileio import portable

    args.out.write_text(json.dumps(portable(row, REPO), indent=1) + "\n")
    print(json.dumps(row["median_s_per_image"]), f"ratio {row[f'ratio_{b}_over_{a}']}")


if __name__ == "__main__":
    main()
