"""`iclevr demo`: the whole story on the embedded world, end to end, reusing whatever is already done.

1. render (or reuse) the embedded course-layout kit,
2. load the evaluator (the course's if the kit has one, else the project's own),
3. train the CPU preset (settings.CPU_PRESET) for a wall-time budget (or reuse a finished run; resume an
   interrupted one),
4. sample and score test and new_test over several seeds (course metric, docs/metric.md),
5. write the denoising trace of the course's trace condition,
6. write `<out>/summary.json`: steps, stage minutes, accuracy per split and seed, the machine, so every
   number the docs quote from a demo run has a file behind it.

Beside the fresh model's scores stand the packaged pretrained model's, read from its file's metadata as
measured when it was packaged (the demo never re-scores it), so a newcomer sees what longer training buys.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from pydantic import Field

from iclevr.settings import CPU_PRESET, Section

SUMMARY_FILE = "summary.json"


class DemoSettings(Section):
    """Settings of `iclevr demo`."""

    minutes: float = Field(10.0, gt=0, le=24 * 60, description="Training budget of the small CPU model, in minutes.")
    out: Path = Field(Path("demo"), description="Demo folder (run, evaluation, trace).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    eval_seeds: list[int] = Field([0, 1, 2], min_length=1, description="Sampling seeds of the evaluation.")
    data_dir: Path | None = Field(None, description="Course data folder; empty = the embedded rendered kit.")
    preset: str = Field(CPU_PRESET, description="Training preset (the CPU preset unless set).")


@contextlib.contextmanager
def _timed(stages: dict[str, float], name: str):
    """Add the wall seconds of the block to stages[name]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        stages[name] = time.perf_counter() - t0


def run_demo(settings: DemoSettings, console) -> dict:
    """Run (or resume) every stage of the demo, write summary.json and return where everything is."""
    from iclevr.data.kits import resolve_data_dir
    from iclevr.fileio import check_writable, write_result_json
    from iclevr.settings import write_settings

    out = check_writable(settings.out)
    write_settings(settings, out, "demo-settings.json")
    stages: dict[str, float] = {}
    with _timed(stages, "data"):
        data_dir = resolve_data_dir(settings.data_dir, console)
    with _timed(stages, "evaluator"):
        evaluator = _evaluator(data_dir, console)
    with _timed(stages, "train"):
        run_dir, reused = _train(settings, data_dir, out / "run", console)
    with _timed(stages, "eval"):
        report = _evaluate(settings, data_dir, run_dir, evaluator, out / "eval", console)
    with _timed(stages, "trace"):
        trace = _trace(settings, run_dir, out / "trace.png")
    result = {
        "data_dir": data_dir,
        "run_dir": run_dir,
        "eval": report,
        "trace": trace,
        "stages": stages,
        "evaluator": evaluator,
        "train_reused": reused,
        "packaged": packaged_scores(console),
    }
    result["summary"] = out / SUMMARY_FILE
    write_result_json(result["summary"], build_summary(settings, result))
    return result


def _evaluator(data_dir: Path, console) -> Path | None:
    """The evaluator file every command would use for this kit (evaluation/evaluator.py decides)."""
    from iclevr.evaluation.fit import load_evaluator

    return load_evaluator(None, data_dir, device="cpu", console=console).path


def _train(settings: DemoSettings, data_dir: Path, run_dir: Path, console) -> tuple[Path, bool]:
    """(run folder, True when a finished run was reused instead of trained)."""
    from iclevr.settings import TrainSettings, resolve
    from iclevr.training.loop import train
    from iclevr.training.run_folder import is_finished

    ts = resolve(
        TrainSettings,
        preset=settings.preset,
        overrides={
            "data.data_dir": str(data_dir),
            "out": str(run_dir),
            "train.device": settings.device,
            "train.max_minutes": settings.minutes,
        },
    )
    if is_finished(run_dir, ts):  # finished within this request's minutes
        console.print(f"[dim]training: finished run found in {run_dir}, reused[/]")
        return run_dir, True
    console.print(f"[bold]training[/] the {settings.preset} model for {settings.minutes:g} minutes in {run_dir}")
    return train(ts, console=console, resume=(run_dir / "state").is_dir()), False


def _evaluate(
    settings: DemoSettings, data_dir: Path, run_dir: Path, evaluator: Path | None, out: Path, console
) -> dict:
    from iclevr.evaluation.run import EvalSettings, evaluate
    from iclevr.settings import SamplerSettings

    es = EvalSettings(
        checkpoint=run_dir,
        split="all",
        data_dir=data_dir,
        evaluator=evaluator,
        seeds=settings.eval_seeds,
        sampler=SamplerSettings(device=settings.device),
        out=out,
    )
    return evaluate(es, console)


def _trace(settings: DemoSettings, run_dir: Path, path: Path) -> dict:
    from iclevr.labels import TRACE_LABELS
    from iclevr.settings import SamplerSettings
    from iclevr.trace import TraceSettings, run_trace

    return run_trace(
        TraceSettings(
            checkpoint=run_dir,
            labels=list(TRACE_LABELS),
            frames=10,
            x0_row=True,
            gif=True,
            sampler=SamplerSettings(device=settings.device),
            out=path,
        )
    )


def packaged_scores(console=None) -> dict | None:
    """The packaged pretrained model's steps and scores from its metadata (not re-scored), or None without one."""
    from iclevr.errors import UserError
    from iclevr.paths import packaged_model_path
    from iclevr.weights import read_info

    path = packaged_model_path()
    if not path.is_file():
        return None
    try:
        info = read_info(path)
    except UserError as e:  # a damaged packaged file must not stop the demo's own story
        if console is not None:
            console.print(f"[yellow]packaged model unreadable, left out: {e}[/]")
        return None
    record = info.packaged or {}
    return {
        "path": str(path),
        "steps": info.step,
        "condition": info.model.condition,
        "wall_hours": record.get("wall_hours"),
        "images_seen": record.get("images_seen"),
        "accuracy": record.get("accuracy", {}),
        "evaluator": record.get("evaluator"),
        "sampler": record.get("sampler"),
        "note": "as measured when packaged (the demo does not re-score it)",
    }


# ---- summary.json ------------------------------------------------------------------------------------


def machine_info(device: str) -> dict:
    """What the demo ran on: CPU model and cores, torch and its thread count, the GPU if one is visible."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "system": platform.system(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _read_json_or_empty(path: Path) -> dict:
    """A run file's JSON, or {} when it is missing or unreadable (the summary then leaves those fields None)."""
    from iclevr.errors import UserError
    from iclevr.fileio import read_json

    try:
        return read_json(path, path.name)
    except UserError:
        return {}


def build_summary(settings: DemoSettings, result: dict) -> dict:
    """The demo's numbers in one JSON-able dict: training steps, stage minutes, accuracy per split and seed."""
    import statistics

    run_dir = Path(result["run_dir"])
    progress = _read_json_or_empty(run_dir / "progress.json")
    run_settings = _read_json_or_empty(run_dir / "settings.json")
    ev = result["eval"]
    accuracy = {
        split: {
            "per_seed": {str(r["seed"]): r["accuracy"] for r in s["runs"]},
            "mean": s["mean"],
            "std": s["std"],
            "hits": s["hits"],
            "total": s["total"],
        }
        for split, s in ev["splits"].items()
    }
    stages = {k: round(v / 60, 3) for k, v in result["stages"].items()}
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine_info(settings.device),
        "demo_settings": settings.model_dump(mode="json"),
        "train": {
            "preset": settings.preset,
            "minutes_budget": settings.minutes,
            "steps": progress.get("step"),
            "batch_size": run_settings.get("train", {}).get("batch_size"),
            "train_minutes": round(progress["wall_s"] / 60, 3) if "wall_s" in progress else None,
            "reused_finished_run": result.get("train_reused", False),
        },
        "stage_minutes": stages,
        "total_minutes": round(sum(stages.values()), 3),
        "sampler": ev.get("sampler"),
        "evaluator": ev.get("evaluator"),
        "report": str(Path(ev["out"]) / "report.html") if ev.get("out") else None,
        "accuracy": accuracy,
        "mean_over_splits": statistics.fmean(a["mean"] for a in accuracy.values()) if accuracy else None,
        "packaged_model": result.get("packaged"),
        "std": "population standard deviation over the sampling seeds (statistics.pstdev)",
        "metric": "course metric: sum of top-k hits / sum of k per split (docs/metric.md)",
    }


def print_summary(console, result: dict) -> None:
    """The closing Rich summary: files, accuracy table, stage timings and the next commands to try."""
    from rich.table import Table

    ev, packaged = result["eval"], result.get("packaged")
    acc = Table(
        title="accuracy (course metric, project evaluator)"
        if "own" in str(ev.get("evaluator"))
        else "accuracy (course metric)"
    )
    columns = ["split", "per seed", "mean ± std", "hits / total"] + (["packaged model*"] if packaged else [])
    for col in columns:
        acc.add_column(col, justify="left" if col == "split" else "right")
    for split, r in ev["splits"].items():
        row = [
            split,
            " ".join(f"{a:.3f}" for a in r["accuracy"]),
            f"{r['mean']:.3f} ± {r['std']:.3f}",
            f"{sum(x['hits'] for x in r['runs'])} / {sum(x['total'] for x in r['runs'])}",
        ]
        if packaged:
            score = packaged["accuracy"].get(split, {})
            row.append(f"{score['mean']:.3f} ± {score.get('std', 0):.3f}" if "mean" in score else "-")
        acc.add_row(*row)
    console.print(acc)
    if packaged:
        hours = f", {packaged['wall_hours']:g} h" if packaged.get("wall_hours") is not None else ""
        console.print(
            f"* the packaged pretrained model ({packaged['condition']}, {packaged['steps']:,} steps{hours}), "
            "as measured when packaged, not re-scored here",
            soft_wrap=True,
        )
    else:
        console.print(
            "packaged pretrained model: none in this install, so there is no longer-trained score to compare with",
            soft_wrap=True,
        )
    files = Table(title="where everything is", show_header=False)
    out = Path(ev["out"])
    for what, path in [
        ("training data", result["data_dir"]),
        ("model run", result["run_dir"]),
        ("weights (EMA)", Path(result["run_dir"]) / "weights" / "ema.safetensors"),
        ("test images", out / "images" / "test"),
        ("new_test images", out / "images" / "new_test"),
        ("grids", f"{out / 'test_grid.png'}, {out / 'new_test_grid.png'}"),
        ("evaluation report (open in a browser)", out / "report.html"),
        ("annotated grids", f"{out / 'test_annotated.png'}, {out / 'new_test_annotated.png'}"),
        ("report data", out / "report.json"),
        ("denoising trace", f"{result['trace']['png']} (+ .gif)"),
        ("demo summary (steps, minutes, accuracy, machine)", result["summary"]),
    ]:
        files.add_row(what, str(path))
    console.print(files)
    console.print("stages: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in result["stages"].items()))
    run = result["run_dir"]
    console.print(
        "[bold]next:[/]\n"
        f'  iclevr sample --checkpoint {run} --labels "red sphere,cyan cube" --num 8 --out mine.png\n'
        f'  iclevr denoise-trace --checkpoint {run} --labels "yellow cylinder,gray cube" --gif\n'
        f"  iclevr train --resume {run} --max-minutes 30      (train longer)\n"
        "  iclevr compare-schedules --max-steps 2000          (the noise-schedule study)"
    )
