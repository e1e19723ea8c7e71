"""Package a trained run as the pretrained model shipped inside iclevr (iclevr/assets/pretrained.safetensors).

    python benchmarks/package_model.py --run RUN_DIR [--out iclevr/assets/pretrained.safetensors]
        [--seeds 0,1,2] [--command "iclevr train --preset ... --out RUN_DIR"] [--machine TEXT] [--processes 1]
        [--sampler-steps N] [--guidance S]

1. Reads RUN_DIR/settings.json, progress.json, metrics.jsonl and the EMA weights (weights/ema.safetensors), and
   refuses (one line, exit 2) a model whose float16 file, plus the autoencoder a latent model decodes with,
   would exceed --max-mb (20 MB) before any scoring. A run started with `--init-from RUN` continues another
   run: the chain of runs is followed back (each run folder's train.init_from) and every stage's steps,
   images and wall time are recorded and summed, with one --command per stage (oldest first).
2. Writes the float16 weights to a temporary file and scores THAT file on val, test and new_test exactly as
   `iclevr eval` would by default (the weights' stored sampler, guidance and steps, or the --sampler-steps /
   --guidance chosen on val, which the packaged file then stores; --seeds; the course
   metric), with the packaged evaluator: the numbers describe the very tensors that ship. The images, grids
   and report.html of that scoring go to RUN_DIR/package-eval/{val,all}/.
3. Writes --out: the same float16 tensors, iclevr's usual metadata (format, model, schedule, sampler, preset,
   step) plus `packaged`, a JSON record: the run's settings, steps, images seen (steps x batch x grad_accum
   x processes), training wall time, machine, the training command, accuracy per split (per seed, mean, std),
   the evaluator's sha256 and the date.
4. Writes --metrics (default benchmarks/results/pretrained/metrics.json): the same record plus the run's loss
   curve from metrics.jsonl, thinned to at most 200 points.

The run folder records no machine, so the record holds --machine when given, else RUN_DIR/machine.json when
present, else the packaging machine's description (marked as such).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "iclevr" / "assets" / "pretrained.safetensors"
METRICS = Path(__file__).parent / "results" / "pretrained" / "metrics.json"
# Issue 26: the packaged model's weights plus the autoencoder it decodes with, float16, at most 20 MB
# (tiny-latent: 5.99 M parameters, 12.0 MB, + the packaged autoencoder's 1.3 MB).
MAX_MB = 20.0
CURVE_POINTS = 200
SPLITS = ("val", "test", "new_test")


def read_run(run: Path) -> dict:
    """The run folder's files: validated settings, progress, metrics rows and the EMA weights' path."""
    from iclevr.errors import UserError
    from iclevr.fileio import read_json, read_jsonl
    from iclevr.settings import TrainSettings

    run = Path(run)
    weights = run / "weights" / "ema.safetensors"
    if not weights.is_file():
        raise UserError(f"{run} holds no EMA weights (weights/ema.safetensors); pass a trained run folder")
    raw = read_json(run / "settings.json", "run settings")
    try:
        TrainSettings.model_validate(raw)
    except ValueError as e:
        raise UserError(f"{run / 'settings.json'} does not hold valid training settings ({type(e).__name__})") from None
    return {
        "settings": raw,
        "progress": read_json(run / "progress.json", "run progress"),
        "metrics": read_jsonl(run / "metrics.jsonl"),
        "weights": weights,
    }


def half_size_mb(model) -> float:
    """Size in MB (10^6 bytes) of the model's tensors stored as float16 (what the file's data takes)."""
    return (
        sum(v.numel() * (2 if v.is_floating_point() else v.element_size()) for v in model.state_dict().values()) / 1e6
    )


def autoencoder_mb(info) -> float:
    """MB of the autoencoder file a latent model ships with (0 for pixel designs): it must be the packaged one."""
    from iclevr.autoencoder import PACKAGED as path
    from iclevr.errors import UserError
    from iclevr.fileio import file_sha256

    if info.model.design != "latent":
        return 0.0
    if not path.is_file() or file_sha256(path) != info.model.autoencoder_sha256:
        raise UserError(
            "this latent model was trained with another autoencoder than iclevr/assets/autoencoder.safetensors; "
            "the packaged model must decode with the packaged autoencoder"
        )
    return path.stat().st_size / 1e6


def lineage(run: Path, files: dict) -> list[dict]:
    """The runs that made these weights, oldest first: RUN and, through train.init_from, the runs it continued
    (steps, batch, wall time and settings of each); a chain into a file or the packaged model stops there."""
    stages, seen = [], set()
    while True:
        train = files["settings"].get("train", {})
        steps = int(files["progress"].get("step", 0))
        stages.append(
            {
                "run": run.name,
                "steps": steps,
                "images_seen": steps * train.get("batch_size", 0) * train.get("grad_accum", 1),
                "wall_s": files["progress"].get("wall_s"),
                "settings": files["settings"],
            }
        )
        seen.add(run.resolve())
        parent = files["settings"].get("init_from")
        if not parent or parent == "packaged" or not (Path(parent) / "settings.json").is_file():
            return stages[::-1]
        run = Path(parent)
        if run.resolve() in seen:
            return stages[::-1]
        files = read_run(run)


def score_file(weights: Path, seeds: list[int], evaluator: Path, out: Path, device: str, console=None) -> dict:
    """Accuracy of a weights file per split like `iclevr eval` (its stored sampler): {accuracy, sampler, evaluator}."""
    from iclevr.evaluation.run import EvalSettings, evaluate
    from iclevr.settings import SamplerSettings

    accuracy, report = {}, {}
    for split in ("val", "all"):  # "all" = test and new_test, the reported lists
        report = evaluate(
            EvalSettings(
                checkpoint=weights,
                split=split,
                seeds=seeds,
                evaluator=evaluator,
                sampler=SamplerSettings(device=device),
                out=out / split,
            ),
            console,
        )
        for name, r in report["splits"].items():
            accuracy[name] = {
                "per_seed": {str(x["seed"]): x["accuracy"] for x in r["runs"]},
                "mean": r["mean"],
                "std": r["std"],
                "hits": r["hits"],
                "total": r["total"],
            }
    return {
        "accuracy": {s: accuracy[s] for s in SPLITS},
        "sampler": report["sampler"],
        "evaluator": {
            "kind": report["evaluator"]["kind"],
            "file": Path(report["evaluator"]["path"]).name,
            "sha256": report["evaluator"]["sha256"],
        },
    }


def machine_record(run: Path, machine: str | None) -> dict:
    """Where the run trained: --machine, else RUN_DIR/machine.json, else this (packaging) machine."""
    from iclevr.fileio import read_json
    from iclevr.studies.demo import machine_info

    if machine:
        return {"description": machine, "source": "--machine"}
    if (run / "machine.json").is_file():
        return {**read_json(run / "machine.json", "machine record"), "source": "machine.json of the run"}
    return {**machine_info("cpu"), "source": "the packaging machine (the run recorded none)"}


def thin_curve(rows: list[dict], points: int = CURVE_POINTS) -> list[dict]:
    """The loss curve (step, loss, lr, wall_s) at no more than `points` evenly spaced log rows, last kept."""
    by_step = {r["step"]: r for r in rows if "loss" in r and "step" in r}  # a resumed session re-logs: last wins
    ordered = [by_step[s] for s in sorted(by_step)]
    if len(ordered) > points:
        keep = sorted({round(i * (len(ordered) - 1) / (points - 1)) for i in range(points)})
        ordered = [ordered[i] for i in keep]
    return [{k: r[k] for k in ("step", "loss", "lr", "wall_s") if k in r} for r in ordered]


def _stage_record(stage: dict) -> dict:
    """One stage of the chain as recorded: its numbers, command and training settings (the model is the same)."""
    return {k: v for k, v in stage.items() if k != "settings"} | {"train": stage["settings"].get("train")}


def build_record(
    run: Path, files: dict, scores: dict, *, seeds, command, machine, processes, stages: list[dict] | None = None
) -> dict:
    """The `packaged` metadata: how the model was trained (every stage of an --init-from chain, summed; `stages`
    from lineage() when the caller has them) and how it scored when packaged."""
    import statistics

    train = files["settings"].get("train", {})
    stages = stages if stages is not None else lineage(run, files)
    commands = list(command) if isinstance(command, (list, tuple)) else [command]
    for stage, cmd in zip(stages, commands if len(commands) == len(stages) else [None] * len(stages)):
        stage["command"] = cmd
    steps = sum(st["steps"] for st in stages)
    batch = {"per_process": train.get("batch_size"), "grad_accum": train.get("grad_accum", 1), "processes": processes}
    walls = [st["wall_s"] for st in stages]
    wall_s = round(sum(walls), 2) if None not in walls else None
    return {
        "run": run.name,
        "settings": files["settings"],
        "command": "\nthen: ".join(c for c in commands if c) or None,
        "stages": [_stage_record(st) for st in stages],
        "steps": steps,
        "images_seen": sum(st["images_seen"] for st in stages) * processes,
        "batch": batch,
        "wall_s": wall_s,
        "wall_hours": round(wall_s / 3600, 3) if wall_s is not None else None,
        "machine": machine_record(run, machine),
        "dtype": "float16",
        "seeds": list(seeds),
        "sampler": scores["sampler"],
        "accuracy": scores["accuracy"],
        "test_new_test_mean": statistics.fmean(scores["accuracy"][s]["mean"] for s in ("test", "new_test")),
        "evaluator": scores["evaluator"],
        "metric": "course metric: top-k hits / objects (docs/metric.md)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def package(
    run: Path,
    out: Path = DEFAULT_OUT,
    *,
    seeds=(0, 1, 2),
    command: str | None = None,
    machine: str | None = None,
    processes: int = 1,
    evaluator: Path | None = None,
    metrics: Path | None = METRICS,
    max_mb: float = MAX_MB,
    device: str = "auto",
    sampler: dict | None = None,
    console=None,
) -> dict:
    """Score RUN's EMA weights as float16 and write the packaged file (+ metrics.json); returns the record.
    `sampler` replaces fields of the run's stored sampler (e.g. {"steps": 16}, chosen on val) in the file."""
    from iclevr.errors import UserError
    from iclevr.evaluation.evaluator import PACKAGED
    from iclevr.fileio import portable, write_result_json
    from iclevr.weights import load_weights, save_weights

    run, out = Path(run), Path(out)
    files = read_run(run)
    model, info = load_weights(files["weights"])
    stages, ae_mb = lineage(run, files), autoencoder_mb(info)
    if (mb := half_size_mb(model) + ae_mb) > max_mb:
        raise UserError(
            f"{files['weights']} would take {mb:.1f} MB as float16 (with its autoencoder), above the {max_mb:g} MB "
            "the package may carry; package a smaller model"
        )
    meta = dict(
        model_cfg=info.model,
        schedule_cfg=info.schedule,
        preset=info.preset,
        step=sum(st["steps"] for st in stages),  # an --init-from chain counts every stage's steps
        half=True,
        sampler_cfg=info.sampler.model_copy(update=sampler or {}),
    )
    with tempfile.TemporaryDirectory(prefix="iclevr-package-") as tmp:
        halved = save_weights(model, Path(tmp) / "halved.safetensors", **meta)
        model, _ = load_weights(halved)  # the float16 tensors that ship, scored as they will run
        scores = score_file(halved, list(seeds), Path(evaluator or PACKAGED), run / "package-eval", device, console)
    record = portable(
        build_record(
            run, files, scores, seeds=seeds, command=command, machine=machine, processes=processes, stages=stages
        ),
        ROOT,
    )  # no path of this machine in the file
    record["sampler_changed_from_run"] = sampler or {}
    save_weights(model, out, **meta, packaged=record)
    if (size := out.stat().st_size + ae_mb * 1e6) > max_mb * 1e6:
        out.unlink()
        raise UserError(f"{out} came out at {size / 1e6:.1f} MB, above {max_mb:g} MB; removed")
    if metrics is not None:
        write_result_json(
            metrics,
            {**record, "file": str(out), "bytes": out.stat().st_size, "loss_curve": thin_curve(files["metrics"])},
            base=ROOT,
        )
    return record


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="Trained run folder (its weights/ema.safetensors).")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="The packaged file to write.")
    p.add_argument("--seeds", default="0,1,2", help="Sampling seeds of the scores, e.g. 0,1,2.")
    p.add_argument(
        "--command",
        action="append",
        default=None,
        help="The command that trained the run (stored as written); once per stage of an --init-from chain, oldest "
        "first.",
    )
    p.add_argument("--machine", default=None, help="Where the run trained (default: machine.json or this one).")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="Training processes (images seen = steps x batch x grad_accum x processes).",
    )
    p.add_argument("--evaluator", type=Path, default=None, help="Evaluator file (default: the packaged one).")
    p.add_argument("--metrics", type=Path, default=METRICS, help="Where the metrics JSON goes.")
    p.add_argument("--max-mb", type=float, default=MAX_MB, help="Refuse a file larger than this (MB).")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (scoring).")
    p.add_argument(
        "--sampler-steps",
        type=int,
        default=None,
        help="Store (and score with) this many sampler steps instead of the run's (a choice made on val).",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="Store (and score with) this guidance scale instead of the run's (a choice made on val).",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Package the run; a bad input is one line on stderr and exit 2."""
    from rich.console import Console

    from iclevr.errors import UserError

    args = parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds must be integers separated by commas, got {args.seeds!r}", file=sys.stderr)
        return 2
    try:
        record = package(
            args.run,
            args.out,
            seeds=seeds,
            command=args.command,
            machine=args.machine,
            processes=args.processes,
            evaluator=args.evaluator,
            metrics=args.metrics,
            max_mb=args.max_mb,
            device=args.device,
            console=Console(stderr=True),
            sampler={
                k: v for k, v in (("steps", args.sampler_steps), ("guidance_scale", args.guidance)) if v is not None
            },
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    acc = record["accuracy"]
    print(
        f"packaged {args.run} -> {args.out} ({record['steps']:,} steps, {args.out.stat().st_size / 1e6:.2f} MB): "
        + ", ".join(f"{s} {acc[s]['mean']:.3f}" for s in SPLITS)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
