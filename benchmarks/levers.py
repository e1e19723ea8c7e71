"""Sample-efficiency levers of the `tiny` preset: each lever switched back one at a time, same CPU budget.

    python benchmarks/levers.py --steps 600 [--only eps_prediction no_min_snr ...] [--threads 1]

Every variant is the `tiny` preset with ONE change (below) and a constant learning rate (the study was run
before the preset switched to a cosine decay; a constant lr makes a fixed step budget a fair cut of any
longer run), trained from the same seed on the embedded kit
for a fixed number of optimizer steps (the CPU budget: 600 steps of 32 images is what `tiny` does in about
ten minutes on the 2-core development machine; variants with another batch size get the same number of
images), then scored like `iclevr eval`: the EMA weights, dpmpp-sde 20 steps, guidance 2, sampling seeds
0/1/2, test and new_test, the project's own evaluator (the packaged v2 unless the kit has checkpoint.pth),
the course metric. A finished run folder in --work is scored again without training. Steps rather than minutes make
the comparison independent of machine load; each row also records its measured seconds per step, so the
wall-clock cost of a lever that changes the step time (architecture, batch size) is visible.
Results: a table on stdout and one JSON file per variant in benchmarks/results/levers/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from iclevr.fileio import portable

RESULTS = Path(__file__).parent / "results" / "levers"
REPO = Path(__file__).resolve().parents[1]  # result files name paths relative to it (iclevr.fileio.portable)
SAMPLER = ("dpmpp-sde", 20)  # iclevr's default sampler: the rows score what a user would get
OLD_ARCH = {
    "block_out_channels": [32, 64, 128],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}

# name: (what changes, settings overrides on top of the tiny preset, batch-size factor)
VARIANTS: dict[str, tuple[str, dict, int]] = {
    "tiny": ("the preset as shipped", {}, 1),
    "eps_prediction": ("predict eps instead of v (min-SNR weight for eps)", {"schedule.prediction_type": "epsilon"}, 1),
    "no_min_snr": ("plain MSE, no min-SNR-5 weighting", {"train.snr_gamma": None}, 1),
    "additive_condition": (
        "time+label embedding added to features, not AdaGN scale/shift",
        {"model.resnet_time_scale_shift": "default"},
        1,
    ),
    "old_architecture": ("3 levels [32, 64, 128], attention at 16x16 and 8x8", {"model": OLD_ARCH}, 1),
    "lr_1e-3": ("peak lr 1e-3 instead of 2e-3", {"train.lr": 1e-3}, 1),
    "batch_64": ("batch 64 (half the steps, same images)", {"train.batch_size": 64}, 2),
    "p_uncond_0.2": ("label dropout 0.2 instead of 0.1", {"train.p_uncond": 0.2}, 1),
    "ema_0.999": ("EMA decay 0.999 instead of 0.995", {"train.ema_decay": 0.999}, 1),
    "old_tiny": (
        "the design the study started from: 3 levels, additive, eps, no min-SNR, batch 64, cosine lr 1e-3, "
        "p_uncond 0.2",
        {
            "model": {**OLD_ARCH, "resnet_time_scale_shift": "default"},
            "schedule.prediction_type": "epsilon",
            "train.snr_gamma": None,
            "train.batch_size": 64,
            "train.lr": 1e-3,
            "train.lr_schedule": "cosine",
            "train.p_uncond": 0.2,
        },
        2,
    ),
}


def run_variant(name: str, steps: int, data_dir: Path | None, work: Path, seeds: list[int]) -> dict:
    """Train one variant for its share of `steps` and score it; the result row."""
    from iclevr.evaluation.run import score_run
    from iclevr.fileio import read_json
    from iclevr.settings import DataSettings, SamplerSettings, TrainSettings, resolve
    from iclevr.training.loop import train
    from iclevr.training.run_folder import is_finished

    what, overrides, factor = VARIANTS[name]
    over = {
        "train.lr_schedule": "constant",
        **overrides,
        "out": str(work / name),  # as the study was run
        "train.max_steps": steps // factor,
        "train.max_minutes": None,
        "train.checkpoint_every": 0,
        "train.seed": 0,
    }
    if data_dir:
        over["data.data_dir"] = str(data_dir)
    settings = resolve(TrainSettings, preset="tiny", overrides=over)
    if is_finished(work / name, settings):  # trained before: only score it again
        run = work / name
        progress = read_json(run / "progress.json", "progress file")
        wall = progress["wall_s"]
    else:
        t0 = time.perf_counter()
        run = train(settings, resume=(work / name / "state").is_dir())
        wall = time.perf_counter() - t0
        progress = read_json(run / "progress.json", "progress file")
    sampler = SamplerSettings(sampler=SAMPLER[0], steps=SAMPLER[1], guidance_scale=2.0)
    scores = score_run(run, data=DataSettings(data_dir=data_dir), sampler=sampler, seeds=seeds)
    means = scores["mean"]
    return {
        "variant": name,
        "change": what,
        "steps": progress["step"],
        "batch": settings.train.batch_size,
        "images": progress["step"] * settings.train.batch_size,
        "train_wall_s": round(wall, 1),
        "s_per_step": round(progress["wall_s"] / max(progress["step"], 1), 3),
        "threads": torch.get_num_threads(),
        "accuracy": scores["accuracy"],
        "test": round(means["test"], 4),
        "new_test": round(means["new_test"], 4),
        "mean": round((means["test"] + means["new_test"]) / 2, 4),
        "seeds": seeds,
        "sampler": f"{SAMPLER[0]}-{SAMPLER[1]}, guidance 2",
        "evaluator": scores["evaluator"],
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main() -> None:
    """Parse arguments, run the chosen variants, print and save the rows."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600, help="Optimizer steps of batch 32 per variant.")
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    p.add_argument("--data-dir", type=Path, default=None, help="Default: the embedded kit.")
    p.add_argument("--work", type=Path, default=Path("runs/levers"), help="Run folders (resumed if present).")
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.only:
        row = run_variant(name, args.steps, args.data_dir, args.work, seeds)
        (RESULTS / f"{name}.json").write_text(json.dumps(portable(row, REPO), indent=1) + "\n")
        print(
            f"{name:20s} steps {row['steps']:5d} x {row['batch']:3d}  {row['s_per_step']:.2f} s/step  "
            f"test {row['test']:.3f}  new_test {row['new_test']:.3f}  mean {row['mean']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
