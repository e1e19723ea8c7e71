"""Accuracy side of the sampling trade-off: each sampler/step count scored on val, test and/or new_test.

    python benchmarks/sampler_accuracy.py RUN --samplers ddpm:1000 dpmpp:10 dpmpp:20 ddim:50 --seeds 0,1,2
    python benchmarks/sampler_accuracy.py RUN --splits val --samplers dpmpp-sde:16 dpmpp-sde:20 --tag val-

Choose on val (--splits val); test and new_test (the default) are reported, not tuned on.

For each sampler it samples every condition of both splits once per seed with the run's EMA weights
(guidance 2, batched classifier-free guidance), scores them with `iclevr eval`'s machinery (the course
metric, the data folder's checkpoint.pth or the project's own evaluator) and records the accuracy per seed
and split together with the sampling wall time. ddpm:1000 is the seed's sampler (1000 DDPM steps); its
two forward passes per step are batched here, which changes the time but not the images' distribution —
the time of the seed's own two-pass loop is measured by benchmarks/sample_speed.py.
Results: one JSON file per sampler in benchmarks/results/sampler_accuracy/ and a line each on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from iclevr.fileio import portable

RESULTS = Path(__file__).parent / "results" / "sampler_accuracy"
REPO = Path(__file__).resolve().parents[1]  # result files name paths relative to it (iclevr.fileio.portable)


def main() -> None:
    """Parse arguments, sample and score with every sampler, write the rows."""
    from iclevr.data.course import load_conditions
    from iclevr.evaluation.fit import load_evaluator
    from iclevr.evaluation.run import generate, score_split
    from iclevr.generate import load_model
    from iclevr.settings import SamplerSettings
    from iclevr.weights import resolve_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="Run folder or weights file.")
    p.add_argument(
        "--samplers",
        nargs="+",
        default=["ddpm:1000", "dpmpp:10", "dpmpp:15", "dpmpp:20", "dpmpp:25", "dpmpp:50", "ddim:50"],
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--splits",
        nargs="+",
        default=None,
        choices=["val", "test", "new_test"],
        help="Condition lists to score (default: test and new_test, labels.SPLITS); choose on val.",
    )
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-clip-x0", action="store_true", help="Do not clip the predicted x0 (SamplerSettings.clip_x0).")
    p.add_argument("--tag", default="", help="Name prefix of the result files.")
    p.add_argument(
        "--evaluators",
        nargs="+",
        type=Path,
        default=None,
        help="Score the same images with each of these evaluator files (one result file each, named "
        "after the evaluator); default: the one `iclevr eval` picks.",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, info, device = load_model(resolve_checkpoint(args.run), "cpu")
    data_dir = args.data_dir  # None: the embedded default kit's lists (nothing rendered)
    conditions = load_conditions(data_dir, tuple(args.splits)) if args.splits else load_conditions(data_dir)
    evaluators = (
        {path.stem: load_evaluator(path, data_dir, device) for path in args.evaluators}
        if args.evaluators
        else {"": load_evaluator(None, data_dir, device)}
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for spec in args.samplers:
        name, steps = spec.split(":")
        sampler = SamplerSettings(
            sampler=name,
            steps=int(steps),
            guidance_scale=args.guidance_scale,
            batch_size=64,
            clip_x0=not args.no_clip_x0,
        )
        rows = {
            key: {
                "run": str(info.path),
                "step": info.step,
                "sampler": name,
                "steps": int(steps),
                "guidance_scale": args.guidance_scale,
                "clip_x0": sampler.clip_x0,
                "seeds": seeds,
                "threads": torch.get_num_threads(),
                "evaluator": ev.describe(),
                "splits": {},
            }
            for key, ev in evaluators.items()
        }
        t0 = time.perf_counter()
        for split, conds in conditions.items():
            runs = generate(model, info, sampler, conds, seeds)  # sampled once, scored by every evaluator
            for key, ev in evaluators.items():
                scored = score_split(ev, runs, conds)
                rows[key]["splits"][split] = {
                    "accuracy": scored["accuracy"],
                    "mean": scored["mean"],
                    "std": scored["std"],
                }
        wall = round(time.perf_counter() - t0, 1)
        for key, row in rows.items():
            row.update(
                sampling_wall_s=wall,
                mean=statistics.fmean(s["mean"] for s in row["splits"].values()),
                when=time.strftime("%Y-%m-%d %H:%M:%S"),
            )
            suffix = f"-{key}" if len(evaluators) > 1 else ""
            (RESULTS / f"{args.tag}{name}-{steps}-seeds{'_'.join(map(str, seeds))}{suffix}.json").write_text(
                json.dumps(portable(row, REPO), indent=1) + "\n"
            )
            scores = "  ".join(f"{split} {s['mean']:.3f}" for split, s in row["splits"].items())
            print(f"{name}-{steps} {key}: {scores}  mean {row['mean']:.3f}  ({wall} s)", flush=True)


if __name__ == "__main__":
    main()
