"""Conditioning lever study (issue 17): pooled vs object tokens, and the tiny-budget levers, on the CPU.

    python benchmarks/conditioning.py --only pooled tokens --steps 600 --threads 1      # equal images
    python benchmarks/conditioning.py --only pooled tokens_shape_colour --minutes 14 --threads 1   # equal wall time
    python benchmarks/conditioning.py --table                                # the table of docs/conditioning.md

Every variant is the `tiny` preset with the changes listed in VARIANTS, trained from --train-seed on the
embedded kit for --steps optimizer steps of 32 images (equal images) or for --minutes of wall time (equal
wall time; the cosine lr runs over the time budget as in `iclevr train --max-minutes`), then scored like
`iclevr eval`: the EMA weights, the default sampler (dpmpp-sde 20), guidance --guidance, sampling --seeds,
the packaged evaluator, the course metric, on val (where choices are made) and on test / new_test (reported,
never tuned on). Run two variants side by side (two processes, --threads 1 each) so both see the same machine
load; each row records its seconds per step. A finished run folder in --work is scored again without training.
One JSON file per row in benchmarks/results/conditioning/ (name: variant, budget, seed).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from iclevr.fileio import portable

RESULTS = Path(__file__).parent / "results" / "conditioning"
REPO = Path(__file__).resolve().parents[1]  # result files name paths relative to it (iclevr.fileio.portable)
CROSS_8_4 = {
    "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
}
CROSS_4 = {
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
}
TOKENS = {"model.condition": "tokens", **{f"model.{k}": v for k, v in CROSS_8_4.items()}}
TOKENS_4 = {"model.condition": "tokens", **{f"model.{k}": v for k, v in CROSS_4.items()}}
SC = {**TOKENS, "model.token_embedding": "shape_colour"}  # the tiny-tokens preset

# name: (what changes against the tiny preset, settings overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "pooled": ("tiny as it was: one pooled label vector on the time path", {}),
    "tokens": ("object tokens (class embedding), cross-attention at 8x8 and 4x4 (+ mid)", TOKENS),
    "tokens_shape_colour": ("tokens = shape + colour embeddings", SC),
    "tokens_4x4": ("tokens, cross-attention at 4x4 (+ mid) only; self-attention at 8x8", TOKENS_4),
    "tokens_4x4_shape_colour": (
        "tokens at 4x4 only, shape + colour embeddings",
        {**TOKENS_4, "model.token_embedding": "shape_colour"},
    ),
    "tokens_4x4_flip": ("tokens at 4x4 only + horizontal flips", {**TOKENS_4, "data.flip": True}),
    "tokens_4x4_no_ema_warmup": (
        "tokens at 4x4 only, EMA without warm-up (decay 0.995 from step 0)",
        {**TOKENS_4, "train.ema_warmup": False},
    ),
    "pooled_flip": ("pooled + horizontal flips", {"data.flip": True}),
    "tokens_flip": ("tokens + horizontal flips", {**TOKENS, "data.flip": True}),
    "tokens_no_ema_warmup": (
        "tokens, EMA without warm-up (decay 0.995 from step 0)",
        {**TOKENS, "train.ema_warmup": False},
    ),
    "tokens_immiscible": (
        "tokens + immiscible noise assignment (Li et al. 2024)",
        {**TOKENS, "train.immiscible": True},
    ),
    "tokens_self_cond": ("tokens + self-conditioning (Chen et al. 2022)", {**TOKENS, "model.self_condition": True}),
    # the levers again on the chosen tokens (shape + colour embeddings = the tiny-tokens preset)
    "sc_flip": ("shape+colour tokens + horizontal flips", {**SC, "data.flip": True}),
    "sc_no_ema_warmup": (
        "shape+colour tokens, EMA without warm-up (decay 0.995 from step 0)",
        {**SC, "train.ema_warmup": False},
    ),
    "sc_immiscible": (
        "shape+colour tokens + immiscible noise assignment (Li et al. 2024)",
        {**SC, "train.immiscible": True},
    ),
    "sc_self_cond": (
        "shape+colour tokens + self-conditioning (Chen et al. 2022)",
        {**SC, "model.self_condition": True},
    ),
    # what the binding counts suggested next: the labels through the tokens alone; a faster lr for short budgets
    "sc_tokens_only": (
        "shape+colour tokens, no pooled label vector on the time path",
        {**SC, "model.label_on_time_path": False},
    ),
    "sc_lr3e-3": ("shape+colour tokens, peak lr 3e-3 (tiny: 2e-3)", {**SC, "train.lr": 3e-3}),
    "sc_lr1.4e-3": ("shape+colour tokens, peak lr 1.4e-3 (tiny: 2e-3)", {**SC, "train.lr": 1.4e-3}),
}


def _row_name(name: str, steps: int | None, minutes: float | None, seed: int) -> str:
    """File stem of a row: variant, budget and training seed."""
    budget = f"{steps}steps" if steps else f"{minutes:g}min"
    return f"{name}-{budget}-s{seed}"


def train_variant(name: str, args) -> tuple[Path, dict]:
    """Train (or reuse) one variant's run folder; returns (run folder, progress)."""
    from iclevr.fileio import read_json
    from iclevr.settings import TrainSettings, resolve
    from iclevr.training.loop import train
    from iclevr.training.run_folder import is_finished

    run = args.work / _row_name(name, args.steps, args.minutes, args.train_seed)
    over = {
        **VARIANTS[name][1],
        "out": str(run),
        "train.max_steps": args.steps,
        "train.max_minutes": args.minutes,
        "train.checkpoint_every": 0,
        "train.checkpoint_every_steps": 100,
        "train.seed": args.train_seed,
        "train.sample_grids": "off",
    }
    settings = resolve(TrainSettings, preset="tiny", overrides=over)
    if not is_finished(run, settings):
        train(settings, resume=(run / "state").is_dir())
    return run, read_json(run / "progress.json", "progress file")


def score(run: Path, args) -> dict:
    """Accuracy per split (val, test, new_test) and the error shares, like `iclevr eval`."""
    from iclevr.evaluation.run import EvalSettings, evaluate
    from iclevr.settings import SamplerSettings

    sampler = SamplerSettings(sampler="dpmpp-sde", steps=20, guidance_scale=args.guidance)
    out = {}
    for split in ("val", "all"):
        report = evaluate(
            EvalSettings(
                checkpoint=run,
                split=split,
                seeds=args.seeds,
                sampler=sampler,
                out=run / f"eval-g{args.guidance:g}-{split}",
            )
        )
        for s, r in report["splits"].items():
            out[s] = {
                "accuracy": r["accuracy"],
                "mean": round(r["mean"], 4),
                "wrong_predictions": r["wrong_predictions"],
            }
        out["evaluator"] = report["evaluator"]
    return out


def table(results: Path = RESULTS) -> str:
    """The study's rows as one markdown table (val first: it decides; test / new_test are reported)."""
    rows = [json.loads(f.read_text()) for f in sorted(results.glob("*.json"))]
    lines = [
        "| row | change | budget | steps × 32 | s/step | val | test | new_test | test/new_test | val: wrong "
        "predictions (binding / colour / shape) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def order(r: dict) -> tuple:
        """Equal-images rows first (by steps), then equal-wall-time rows (by minutes); variants alphabetical."""
        minutes = r["budget"].get("minutes")
        return (minutes is not None, minutes or r["steps"], r["variant"], r["train_seed"], r["sampler"])

    for r in sorted(rows, key=order):
        budget = f"{r['budget']['minutes']:g} min" if r["budget"].get("minutes") else f"{r['budget']['steps']:,} steps"
        wrong = r["val"]["wrong_predictions"]
        shares = " / ".join(f"{wrong[k] / wrong['total']:.0%}" for k in ("binding", "colour", "shape"))
        share = f"{wrong['total']} ({shares})" if wrong["total"] else "–"
        seeds = "/".join(map(str, r["seeds"]))
        guidance = r["sampler"].split("guidance ")[-1]
        lines.append(
            f"| {r['variant']} (train seed {r['train_seed']}, guidance {guidance}) | {r['change']} | "
            f"{budget} | {r['steps']:,} | "
            f"{r['s_per_step']:.2f} | **{r['val']['mean']:.3f}** | {r['test']['mean']:.3f} | "
            f"{r['new_test']['mean']:.3f} | {r['test_new_test_mean']:.3f} | {share} (seeds {seeds}) |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, train and score the chosen variants, save one row each."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(VARIANTS))
    p.add_argument("--table", action="store_true", help="Print the committed rows as a markdown table and stop.")
    p.add_argument("--steps", type=int, default=None, help="Optimizer steps of batch 32 (equal images).")
    p.add_argument("--minutes", type=float, default=None, help="Wall-clock budget (equal wall time).")
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    p.add_argument("--work", type=Path, default=Path("runs/conditioning"), help="Run folders (resumed if present).")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--guidance", type=float, default=2.0)
    args = p.parse_args()
    if args.table:
        print(table())
        return
    if not args.only:
        p.error("name the variants to run with --only")
    if (args.steps is None) == (args.minutes is None):
        p.error("give exactly one of --steps and --minutes")
    if args.threads:
        torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        run, progress = train_variant(name, args)
        scores = score(run, args)
        row = {
            "variant": name,
            "change": VARIANTS[name][0],
            "overrides": VARIANTS[name][1],
            "budget": {"steps": args.steps, "minutes": args.minutes},
            "train_seed": args.train_seed,
            "steps": progress["step"],
            "images": progress["step"] * 32,
            "train_wall_s": progress["wall_s"],
            "s_per_step": round(progress["wall_s"] / max(progress["step"], 1), 3),
            "threads": torch.get_num_threads(),
            "machine": f"{platform.node()} {platform.processor()}",
            "sampler": f"dpmpp-sde-20, guidance {args.guidance:g}",
            "seeds": args.seeds,
            **scores,
            "test_new_test_mean": round((scores["test"]["mean"] + scores["new_test"]["mean"]) / 2, 4),
            "command": f"python benchmarks/conditioning.py --only {name} "
            + (f"--steps {args.steps}" if args.steps else f"--minutes {args.minutes:g}")
            + f" --train-seed {args.train_seed} --threads {args.threads}"
            + f" --seeds {','.join(map(str, args.seeds))} --guidance {args.guidance:g}",
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        stem = _row_name(name, args.steps, args.minutes, args.train_seed)
        suffix = "" if args.guidance == 2.0 else f"-g{args.guidance:g}"
        (RESULTS / f"{stem}{suffix}.json").write_text(json.dumps(portable(row, REPO), indent=1) + "\n")
        print(
            f"{stem:40s} {row['steps']:5d} steps {row['s_per_step']:.2f} s/step  val {scores['val']['mean']:.3f}  "
            f"test {scores['test']['mean']:.3f}  new_test {scores['new_test']['mean']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
