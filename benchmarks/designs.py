"""Native 64x64 study (issue 26): the three designs at equal CPU time, on val.

    python benchmarks/designs.py --step-time --threads 1                 # s/step of each design, interleaved
    python benchmarks/designs.py --only latent --minutes 10 --train-seed 0 --threads 1
    python benchmarks/designs.py --table                                 # the docs/designs.md table

Designs (presets): pixels32 = `tiny-tokens` (32x32, bilinear upsampling to 64x64, today's CPU preset), patch2 =
`tiny-patch` (64x64 pixels as 2x2 patches, shifted schedule), latent = `tiny-latent` (16x16x4 latents of the
packaged autoencoder, decoded to 64x64).

Equal wall time without an idle machine: the idle 2-thread speed of pixels32 is known from the demo's 10-minute
run (benchmarks/results/demo/2026-12-03-tiny-tokens-10min.json: 705 steps in 10 minutes); every design's
seconds per step is measured against pixels32's in the same process, alternating (--step-time, committed in
step_time.json), so a design's budget for M minutes is 70.5 * M * t(pixels32) / t(design) steps, whatever the
load while it trains. The lr anneals over those steps (a step budget), as a time budget would over the minutes.
Scored on val only (design choices are made there), 2 sampling seeds, each preset's stored sampler, the packaged
evaluator: the course metric, the wrong-prediction shares, and fidelity (KID/FD, iclevr.evaluation.fidelity).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "designs"
DESIGNS = {"pixels32": "tiny-tokens", "patch2": "tiny-patch", "latent": "tiny-latent"}
DEMO_10MIN = Path(__file__).parent / "results" / "demo" / "2026-12-03-tiny-tokens-10min.json"


def _settings(design: str, **over):
    from iclevr.settings import TrainSettings, resolve

    return resolve(TrainSettings, preset=DESIGNS[design], overrides=over)


def step_time(rounds: int = 5, steps: int = 4) -> dict:
    """Seconds per training step (batch 32, forward + backward + AdamW) of each design, alternating designs
    round by round so they share the machine's load; the median of each design's rounds."""
    from iclevr.model import build_model
    from iclevr.schedules import make_scheduler
    from iclevr.training.loop import diffusion_loss, make_optimizer

    setups = {}
    for d in DESIGNS:
        s = _settings(d, **{"model.autoencoder_sha256": "0" * 64})
        torch.manual_seed(0)
        model = build_model(s.model).train()
        ab = make_scheduler(s.schedule).alphas_cumprod.float()
        x0 = torch.randn(32, *model.x_shape)  # (32, C, H, W): the data's cost is not the step's
        y = (torch.rand(32, 24) < 0.1).float()
        setups[d] = (s, model, make_optimizer(model, s.train), ab, x0, y)
    times: dict[str, list[float]] = {d: [] for d in DESIGNS}
    for r in range(rounds + 1):  # round 0 warms up
        for d, (s, model, opt, ab, x0, y) in setups.items():
            t0 = time.perf_counter()
            for k in range(steps):
                loss = diffusion_loss(model, x0, y, ab, s, torch.Generator().manual_seed(k))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if r:
                times[d].append((time.perf_counter() - t0) / steps)
    return {
        d: {"median_s": round(statistics.median(v), 4), "rounds": [round(x, 4) for x in v]} for d, v in times.items()
    }


def budget_steps(design: str, minutes: float) -> int:
    """Steps of `design` that match `minutes` of pixels32 on the idle machine (module docstring)."""
    demo = json.loads(DEMO_10MIN.read_text())
    per_min = demo["train"]["steps"] / demo["train"]["train_minutes"]  # 705 / 10.008
    t = json.loads((RESULTS / "step_time.json").read_text())["designs"]
    return round(per_min * minutes * t["pixels32"]["median_s"] / t[design]["median_s"])


def train_design(design: str, steps: int, seed: int, work: Path) -> tuple[Path, dict]:
    """Train (or reuse) one design's run folder for `steps` steps; returns (run folder, progress)."""
    from iclevr.fileio import read_json
    from iclevr.training.loop import train
    from iclevr.training.run_folder import is_finished

    run = work / f"{design}-{steps}steps-s{seed}"
    settings = _settings(
        design,
        **{
            "out": str(run),
            "train.max_steps": steps,
            "train.max_minutes": None,
            "train.checkpoint_every": 0,
            "train.checkpoint_every_steps": 200,
            "train.seed": seed,
            "train.sample_grids": "off",
        },
    )
    if not is_finished(run, settings):
        train(settings, resume=(run / "state").is_dir())
    return run, read_json(run / "progress.json", "progress file")


def score(run: Path, seeds: list[int]) -> dict:
    """val: accuracy per seed, mean, wrong-prediction kinds and fidelity, like `iclevr eval --split val`."""
    from iclevr.evaluation.run import EvalSettings, evaluate

    report = evaluate(EvalSettings(checkpoint=run, split="val", seeds=seeds, fidelity=True, out=run / "eval-val"))
    r = report["splits"]["val"]
    return {
        "val": {
            "accuracy": r["accuracy"],
            "mean": round(r["mean"], 4),
            "wrong_predictions": r["wrong_predictions"],
            "fidelity": r["fidelity"],
        },
        "sampler": report["sampler"],
        "evaluator": report["evaluator"],
    }


def score_reported(run: Path, seeds=(0, 1, 2)) -> dict:
    """test and new_test accuracy (3 sampling seeds, the run's stored sampler): reported beside the study's val
    numbers for the demo's targets, never used to choose a design or a setting."""
    from iclevr.evaluation.run import EvalSettings, evaluate

    report = evaluate(EvalSettings(checkpoint=run, split="all", seeds=list(seeds), fidelity=True, out=run / "eval-all"))
    out = {}
    for name, r in report["splits"].items():
        f = r["fidelity"]
        out[name] = {
            "accuracy": r["accuracy"],
            "mean": round(r["mean"], 4),
            "kid": f["generated"]["kid"],
            "kid_std": f["generated"]["kid_std"],
            "kid_floor": f["floor"]["kid"],
        }
    out["mean_test_new_test"] = round((out["test"]["mean"] + out["new_test"]["mean"]) / 2, 4)
    out["seeds"] = list(seeds)
    return out


def table(results: Path = RESULTS) -> str:
    """The committed rows as a markdown table."""
    rows = [json.loads(f.read_text()) for f in sorted(results.glob("*-s*.json"))]
    lines = [
        "| design | budget (pixels32-minutes) | steps × 32 | val accuracy | val KID ×10³ (floor) | val FD (floor) "
        "| wrong predictions (binding / colour / shape) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: (r["minutes"], r["design"], r["train_seed"])):
        v, f = r["val"], r["val"]["fidelity"]
        w = v["wrong_predictions"]
        shares = " / ".join(f"{w[k] / w['total']:.0%}" for k in ("binding", "colour", "shape")) if w["total"] else "–"
        lines.append(
            f"| {r['design']} (train seed {r['train_seed']}) | {r['minutes']:g} | {r['steps']:,} | "
            f"**{v['mean']:.3f}** | {1e3 * f['generated']['kid']:.1f} ± {1e3 * f['generated']['kid_std']:.1f}"
            f" ({1e3 * f['floor']['kid']:.1f}) | {f['generated']['fd']:.2f} ({f['floor']['fd']:.2f}) | "
            f"{w['total']} ({shares}) |"
        )
    return "\n".join(lines)


def reported_table(results: Path = RESULTS) -> str:
    """test and new_test of the rows scored with --report-test (the demo's targets), as a markdown table."""
    rows = [json.loads(f.read_text()) for f in sorted(results.glob("*-s*.json"))]
    lines = [
        "| design | budget (pixels32-minutes) | steps × 32 | test | new_test | mean of test and new_test |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted((r for r in rows if "reported" in r), key=lambda r: (r["minutes"], r["design"], r["train_seed"])):
        t = r["reported"]
        lines.append(
            f"| {r['design']} (train seed {r['train_seed']}) | {r['minutes']:g} | {r['steps']:,} | "
            f"{t['test']['mean']:.3f} | {t['new_test']['mean']:.3f} | **{t['mean_test_new_test']:.3f}** |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments; measure step times, or train and score designs, or print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(DESIGNS))
    p.add_argument("--step-time", action="store_true", help="Measure s/step of every design (step_time.json).")
    p.add_argument("--table", action="store_true", help="Print the committed rows as a markdown table.")
    p.add_argument("--minutes", type=float, default=10.0, help="Budget in idle pixels32-minutes.")
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", type=Path, default=Path("runs/designs"))
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    p.add_argument(
        "--report-test",
        action="store_true",
        help="Also score test and new_test (3 seeds) for the demo's targets; an existing row keeps its val numbers.",
    )
    args = p.parse_args()
    from iclevr.fileio import write_result_json

    if args.threads:
        torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(table() + "\n\n" + reported_table())
        return
    if args.step_time:
        row = {
            "designs": step_time(),
            "threads": torch.get_num_threads(),
            "batch": 32,
            "machine": f"{platform.machine()} {platform.processor()}",
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": f"python benchmarks/designs.py --step-time --threads {args.threads}",
        }
        write_result_json(RESULTS / "step_time.json", row, ROOT)
        print(json.dumps(row["designs"]))
        return
    for d in args.only or p.error("name designs with --only"):
        steps = budget_steps(d, args.minutes)
        run, progress = train_design(d, steps, args.train_seed, args.work)
        path = RESULTS / f"{d}-{args.minutes:g}min-s{args.train_seed}.json"
        if args.report_test and path.is_file() and json.loads(path.read_text())["steps"] == progress["step"]:
            row = json.loads(path.read_text()) | {"reported": score_reported(run)}
            write_result_json(path, row, ROOT)
            print(f"{d}: test/new_test mean {row['reported']['mean_test_new_test']:.3f}", flush=True)
            continue
        row = {
            "design": d,
            "preset": DESIGNS[d],
            "minutes": args.minutes,
            "train_seed": args.train_seed,
            "steps": progress["step"],
            "train_wall_s": progress["wall_s"],
            "threads": torch.get_num_threads(),
            **score(run, args.seeds),
            "seeds": args.seeds,
            "command": f"python benchmarks/designs.py --only {d} --minutes {args.minutes:g} --train-seed "
            f"{args.train_seed} --threads {args.threads}",
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if args.report_test:
            row["reported"] = score_reported(run)
        write_result_json(path, row, ROOT)
        print(
            f"{d}: {row['steps']} steps, val {row['val']['mean']:.3f}, KID x1e3 "
            f"{1e3 * row['val']['fidelity']['generated']['kid']:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
