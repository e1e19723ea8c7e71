"""How long one training-state save takes for a preset's model size (issue 29: the seed preset saved every
epoch): the resumable state (model, EMA, Adam moments; written atomically with fsync) and the two inference
weight files, timed separately, on this machine's disk.

    python benchmarks/state_save.py [--preset seed] [--repeats 2] [--dir TMP] [--out JSON]

The state is the one iclevr.training.run_folder.save_snapshot writes, after one optimizer step so the Adam moments
exist. --dir is where the files are written (default: a temporary folder, removed after). Results:
benchmarks/results/state_save.json. The share of an epoch it costs on a GPU is save_s / epoch_s; the epoch time
waits for a GPU (benchmarks/gpu_check.sh part (a) measures the seed preset's images/s).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path("benchmarks") / "results" / "state_save.json"  # relative: run from the repository root
ICLEVR_TRAIN_IMAGES = 18009  # images in the course kit's train.json (6,003 scenes x 3 partial renders)


def timed(fn) -> float:
    """Seconds `fn()` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    """Time the saves and write the JSON."""
    from iclevr.ema import EMA
    from iclevr.model import build_model, count_parameters
    from iclevr.settings import TrainSettings, resolve
    from iclevr.training.loop import make_optimizer
    from iclevr.training.state import rng_states, save_state
    from iclevr.weights import save_weights

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="seed")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    settings = resolve(TrainSettings, preset=args.preset)
    torch.manual_seed(0)
    model = build_model(settings.model)
    ema, opt = EMA(model), make_optimizer(model, settings.train)
    for p in model.parameters():  # one step with zero gradients: the Adam moments exist, as after any step
        p.grad = torch.zeros_like(p)
    opt.step()
    state = {
        "step": 1,
        "wall_s": 0.0,
        "settings": "{}",
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": None,
        "rng": rng_states(),
    }
    meta = dict(
        model_cfg=settings.model,
        schedule_cfg=settings.schedule,
        sampler_cfg=settings.sampler,
        preset=settings.preset,
        step=1,
    )
    rows = {"state": [], "ema_weights": [], "model_weights": []}
    with tempfile.TemporaryDirectory(prefix="iclevr-state-save-", dir=args.dir) as tmp:
        run = Path(tmp)
        for k in range(args.repeats):
            state["step"] = k + 1
            rows["state"].append(timed(lambda: save_state(run / "state", state, keep=1)))
            rows["ema_weights"].append(
                timed(lambda: save_weights(ema.model, run / "weights" / "ema.safetensors", **meta))
            )
            rows["model_weights"].append(
                timed(lambda: save_weights(model, run / "weights" / "model.safetensors", **meta))
            )
        sizes = {
            "state": sum(p.stat().st_size for p in (run / "state").glob("step-*.pt")),
            "ema_weights": (run / "weights" / "ema.safetensors").stat().st_size,
            "model_weights": (run / "weights" / "model.safetensors").stat().st_size,
        }
    steps_per_epoch = ICLEVR_TRAIN_IMAGES // settings.train.batch_size
    result = {
        "preset": args.preset,
        "params_M": round(count_parameters(model) / 1e6, 2),
        "repeats": args.repeats,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "files": {
            name: {
                "bytes": sizes[name],
                "seconds": [round(s, 2) for s in secs],
                "median_s": round(statistics.median(secs), 2),
                "mb_per_s": round(sizes[name] / 1e6 / statistics.median(secs), 1),
            }
            for name, secs in rows.items()
        },
        "steps_per_epoch": steps_per_epoch,
        "note": "CPU machine, shared disk; the GPU machine's disk may be faster or slower. share of an epoch = "
        "save_s / (steps_per_epoch / steps_per_s)",
    }
    result["every_save_s"] = round(sum(f["median_s"] for f in result["files"].values()), 2)
    result["every_save_bytes"] = sum(sizes.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
