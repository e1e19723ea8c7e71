"""`iclevr demo`: the whole story on the embedded world, end to end, reusing whatever is already done.

1. render (or reuse) the embedded course-layout kit,
2. load (or train once) the project's own evaluator,
3. train the `tiny` preset for a wall-time budget (or reuse a finished run; resume an interrupted one),
4. sample and score test and new_test over several seeds (course metric),
5. write the denoising trace of ["red sphere", "cyan cylinder", "cyan cube"].
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from iclevr.settings import Section

TRACE_LABELS = ["red sphere", "cyan cylinder", "cyan cube"]


class DemoSettings(Section):
    """Settings of `iclevr demo`."""

    minutes: float = Field(10.0, gt=0, le=24 * 60, description="Training budget of the tiny model, in minutes.")
    out: Path = Field(Path("demo"), description="Demo folder (run, evaluation, trace).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    eval_seeds: list[int] = Field([0, 1, 2], min_length=1, description="Sampling seeds of the evaluation.")
    data_dir: Path | None = Field(None, description="Course data folder; empty = the embedded rendered kit.")
    preset: str = Field("tiny", description="Training preset.")


def run_demo(settings: DemoSettings, console) -> dict:
    """Run (or resume) every stage of the demo and return where everything is, with stage timings."""
    from iclevr.data.course import resolve_data_dir
    from iclevr.fileio import check_writable
    from iclevr.settings import write_settings

    out = check_writable(settings.out)
    write_settings(settings, out, "demo-settings.json")
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    data_dir = resolve_data_dir(settings.data_dir, console)
    stages["data"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluator = _evaluator(settings, data_dir, console)
    stages["evaluator"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_dir = _train(settings, data_dir, out / "run", console)
    stages["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = _evaluate(settings, data_dir, run_dir, evaluator, out / "eval", console)
    stages["eval"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    trace = _trace(settings, run_dir, out / "trace.png")
    stages["trace"] = time.perf_counter() - t0
    return {"data_dir": data_dir, "run_dir": run_dir, "eval": report, "trace": trace, "stages": stages,
            "evaluator": evaluator}


def _evaluator(settings: DemoSettings, data_dir: Path, console) -> Path | None:
    """The course checkpoint.pth if the data folder has one, else the project's own (trained once, cached)."""
    from iclevr.evaluation.fit import ensure_own_evaluator

    course = data_dir / "checkpoint.pth"
    if course.is_file():
        return course
    return ensure_own_evaluator(device="cpu", console=console).path


def _train(settings: DemoSettings, data_dir: Path, run_dir: Path, console) -> Path:
    from iclevr.settings import TrainSettings, resolve
    from iclevr.training.loop import is_finished, train

    ts = resolve(TrainSettings, preset=settings.preset,
                 overrides={"data.data_dir": str(data_dir), "out": str(run_dir), "train.device": settings.device,
                            "train.max_minutes": settings.minutes})
    if is_finished(run_dir, ts):
        console.print(f"[dim]training: finished run found in {run_dir}, reused[/]")
        return run_dir
    console.print(f"[bold]training[/] the {settings.preset} model for {settings.minutes:g} minutes in {run_dir}")
    return train(ts, console=console, resume=(run_dir / "state").is_dir())


def _evaluate(settings: DemoSettings, data_dir: Path, run_dir: Path, evaluator: Path | None, out: Path,
              console) -> dict:
    from iclevr.evaluation.run import EvalSettings, evaluate
    from iclevr.settings import SamplerSettings

    es = EvalSettings(checkpoint=run_dir, split="all", data_dir=data_dir, evaluator=evaluator,
                      seeds=settings.eval_seeds, sampler=SamplerSettings(device=settings.device), out=out)
    return evaluate(es, console)


def _trace(settings: DemoSettings, run_dir: Path, path: Path) -> dict:
    from iclevr.settings import SamplerSettings
    from iclevr.trace import TraceSettings, run_trace

    return run_trace(TraceSettings(checkpoint=run_dir, labels=TRACE_LABELS, frames=10, x0_row=True, gif=True,
                                   sampler=SamplerSettings(device=settings.device), out=path))


def print_summary(console, result: dict) -> None:
    """The closing Rich summary: files, accuracy table, stage timings and the next commands to try."""
    from rich.table import Table

    ev = result["eval"]
    acc = Table(title="accuracy (course metric, project evaluator)" if "own" in str(ev.get("evaluator"))
                else "accuracy (course metric)")
    for col in ("split", "per seed", "mean ± std", "hits / total"):
        acc.add_column(col, justify="left" if col == "split" else "right")
    for split, r in ev["splits"].items():
        acc.add_row(split, " ".join(f"{a:.3f}" for a in r["accuracy"]), f"{r['mean']:.3f} ± {r['std']:.3f}",
                    f"{sum(x['hits'] for x in r['runs'])} / {sum(x['total'] for x in r['runs'])}")
    console.print(acc)
    files = Table(title="where everything is", show_header=False)
    out = Path(ev["out"])
    for what, path in [("training data", result["data_dir"]), ("model run", result["run_dir"]),
                       ("weights (EMA)", Path(result["run_dir"]) / "weights" / "ema.safetensors"),
                       ("test images", out / "images" / "test"), ("new_test images", out / "images" / "new_test"),
                       ("grids", f"{out / 'test_grid.png'}, {out / 'new_test_grid.png'}"),
                       ("evaluation report", out / "report.json"),
                       ("denoising trace", f"{result['trace']['png']} (+ .gif)")]:
        files.add_row(what, str(path))
    console.print(files)
    console.print("stages: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in result["stages"].items()))
    run = result["run_dir"]
    console.print("[bold]next:[/]\n"
                  f"  iclevr sample --checkpoint {run} --labels \"red sphere,cyan cube\" --num 8 --out mine.png\n"
                  f"  iclevr denoise-trace --checkpoint {run} --labels \"yellow cylinder,gray cube\" --gif\n"
                  f"  iclevr train --resume {run} --max-minutes 30      (train longer)\n"
                  "  iclevr compare-schedules --max-steps 2000          (the noise-schedule study)")
