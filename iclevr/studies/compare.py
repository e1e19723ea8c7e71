"""The noise-schedule study: train one model per schedule with everything else identical, score each.

Fairness: every run starts from the same preset, the same training seed (so the same initial weights
and the same data order, both derived from the seed alone), the same step budget and the same
evaluation seeds and sampler; only `schedule.name` differs. Runs are ordinary run folders under the
study folder, so a finished run is skipped and an interrupted one resumed when the study is re-run.

Each run is scored on val, the list design choices are made on, and on test and new_test, which are only
reported: the study's best schedule is the one with the highest val mean, never a test or new_test number.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from pydantic import Field, model_validator

from iclevr.errors import UserError
from iclevr.labels import SPLITS, VAL_SPLIT
from iclevr.settings import CPU_PRESET, DataSettings, SamplerSettings, Section

PLOT_T = 1000
TABLE_T = (0, 250, 500, 750, 999)
STUDY_SPLITS = (VAL_SPLIT, *SPLITS)  # val chooses; test and new_test are reported, never tuned on


class CompareSettings(Section):
    """Settings of `iclevr compare-schedules`."""

    schedules: list[str] = Field(
        ["linear", "cosine", "squaredcos_cap_v2"],
        min_length=1,
        description="Noise schedules to compare (see iclevr.schedules).",
    )
    preset: str = Field(CPU_PRESET, description="Training preset shared by every run (default: the CPU preset).")
    train_config: Path | None = Field(None, description="Extra training settings file applied to every run.")
    epochs: int | None = Field(None, gt=0, description="Training epochs per run.")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps per run (wins over epochs).")
    seeds: list[int] = Field([0], min_length=1, description="Training seeds (one run per schedule and seed).")
    eval_seeds: list[int] = Field([0, 1, 2], min_length=1, description="Sampling seeds of the evaluation.")
    data: DataSettings = Field(default_factory=DataSettings, description="Training and test data.")
    sampler: SamplerSettings = Field(default_factory=SamplerSettings, description="Sampler of the evaluation.")
    evaluator: Path | None = Field(None, description="Evaluator file; default as in `iclevr eval`.")
    out: Path = Field(Path("compare-schedules"), description="Study folder (runs, figures, report).")
    plot_only: bool = Field(
        False, description="Only draw the schedules figure and write their table (report.json); no training."
    )

    @model_validator(mode="after")
    def _check(self) -> CompareSettings:
        from iclevr.schedules import check_name

        for name in self.schedules:
            check_name(name)
        if len(set(self.schedules)) != len(self.schedules):
            raise ValueError("each schedule may be named once")
        if not self.plot_only and self.epochs is None and self.max_steps is None:
            raise ValueError(
                "give a fixed budget with --epochs or --max-steps (a wall-time budget would give "
                "the schedules different step counts)"
            )
        return self


def schedule_table(names: list[str], T: int = PLOT_T) -> list[dict]:
    """alpha_bar at a few t and the SNR range (log10) of each schedule."""
    from iclevr import schedules

    rows = []
    for name in names:
        ab = schedules.alpha_bar(name, T)
        snr = ab / (1 - ab)
        rows.append(
            {
                "name": name,
                "alpha_bar": {t: float(ab[t]) for t in TABLE_T if t < T},
                "log10_snr_min": float(snr.min().log10()),
                "log10_snr_max": float(snr.max().log10()),
            }
        )
    return rows


def run_study(settings: CompareSettings, console) -> dict:
    """Train (or reuse) one run per schedule and seed, evaluate each, and write figures and the report."""
    from iclevr.fileio import check_writable, write_result_json
    from iclevr.studies.plots import plot_accuracy, plot_schedules

    if settings.plot_only:
        check_no_study(settings.out)
    out = check_writable(settings.out)
    plot_schedules(settings.schedules, PLOT_T, out / "schedules.png")
    report = {"settings": json.loads(settings.model_dump_json()), "table": schedule_table(settings.schedules)}
    if not settings.plot_only:
        rows = []
        for name in settings.schedules:
            runs = [_train_and_score(settings, name, seed, console) for seed in settings.seeds]
            rows.append(_summarise(name, runs))
        report["runs"] = rows
        report["choose_on"], report["best"] = VAL_SPLIT, best_schedule(rows)
        plot_accuracy(rows, out / "accuracy.png")
    write_result_json(out / "report.json", report)  # --plot-only too: the table's numbers then have a file
    if not settings.plot_only:
        _write_page(settings, out, report)
    return report


def check_no_study(out: Path) -> None:
    """--plot-only writes report.json and schedules.png: refuse a folder whose report holds a study's runs."""
    from iclevr.fileio import read_json

    report = Path(out) / "report.json"
    if report.is_file() and "runs" in (read_json(report, "study report") or {}):
        raise UserError(
            f"{out} holds a finished study (report.json with its runs); --plot-only would replace its "
            "report and figure: give --plot-only a new --out folder"
        )


def _write_page(settings: CompareSettings, out: Path, report: dict) -> Path:
    """report.html: the figures, then every schedule's accuracy and grid side by side (self-contained)."""
    from iclevr.evaluation.html import write_comparison

    seed = settings.seeds[0]
    grids = {
        r["name"]: (out / f"grid-{r['name']}-s{seed}.png").read_bytes()
        for r in report["runs"]
        if (out / f"grid-{r['name']}-s{seed}.png").is_file()
    }
    figures = {
        "noise schedules": (out / "schedules.png").read_bytes(),
        "accuracy by schedule": (out / "accuracy.png").read_bytes(),
    }
    return write_comparison(out / "report.html", report, grids=grids, figures=figures)


def _train_settings(settings: CompareSettings, name: str, seed: int):
    from iclevr.settings import TrainSettings, resolve

    overrides = {
        "schedule.name": name,
        "train.seed": seed,
        "train.max_minutes": None,  # the same steps for all
        "out": str(settings.out / "runs" / f"{name}-s{seed}"),
        "data": json.loads(settings.data.model_dump_json()),
    }
    if settings.max_steps:
        overrides["train.max_steps"] = settings.max_steps
    else:
        overrides["train.epochs"] = settings.epochs
    return resolve(TrainSettings, preset=settings.preset, config=settings.train_config, overrides=overrides)


def _train_and_score(settings: CompareSettings, name: str, seed: int, console) -> dict:
    """One run: train unless finished (resume if interrupted), then score it on val, test and new_test."""
    from iclevr.training.loop import train
    from iclevr.training.run_folder import is_finished

    ts = _train_settings(settings, name, seed)
    run_dir = Path(ts.out)
    t0 = time.time()
    if is_finished(run_dir, ts):
        console.print(f"[dim]{name} (seed {seed}): finished run found in {run_dir}, not retrained[/]")
    else:
        console.print(f"[bold]{name}[/] (seed {seed}): training in {run_dir}")
        train(ts, console=console, resume=run_dir.exists())
    scores = _score(settings, run_dir, name, seed, console)
    scores.update(train_wall_s=_train_wall(run_dir, fallback=time.time() - t0), final_loss=_final_loss(run_dir))
    return scores


def _score(settings: CompareSettings, run_dir: Path, name: str, seed: int, console) -> dict:
    """Accuracy per split and eval seed (cached in the run folder for these evaluation settings)."""
    from iclevr.evaluation.run import score_run

    cache = run_dir / "compare-eval.json"
    key = {
        "splits": list(STUDY_SPLITS),
        "eval_seeds": settings.eval_seeds,
        "sampler": json.loads(settings.sampler.model_dump_json()),
        "evaluator": str(settings.evaluator) if settings.evaluator else None,
    }
    if cache.is_file():
        cached = json.loads(cache.read_text())  # a cache from before val was scored has another key
        if cached.get("key") == key and cached["scores"]["evaluator"].get("sha256") == _evaluator_sha(settings):
            return cached["scores"]
    reported = score_run(
        run_dir,
        data=settings.data,
        sampler=settings.sampler,
        seeds=settings.eval_seeds,
        evaluator=settings.evaluator,
        grid_path=settings.out / f"grid-{name}-s{seed}.png",
        console=console,
    )
    scores = _with_val(reported, _score_val(settings, run_dir, console))
    from iclevr.fileio import write_json

    write_json(cache, {"key": key, "scores": scores})
    return scores


def _score_val(settings: CompareSettings, run_dir: Path, console) -> dict:
    """Score a run on val with the study's evaluation settings, as `iclevr eval --split val` into <run>/eval-val."""
    from iclevr.evaluation.run import EvalSettings, evaluate

    report = evaluate(
        EvalSettings(
            checkpoint=run_dir,
            split=VAL_SPLIT,
            data_dir=settings.data.data_dir,
            evaluator=settings.evaluator,
            seeds=settings.eval_seeds,
            sampler=settings.sampler,
            out=run_dir / "eval-val",
        ),
        console,
    )
    return report["splits"][VAL_SPLIT]


def _with_val(reported: dict, val: dict) -> dict:
    """score_run's test/new_test scores with val's put first (the split order of every table)."""
    per_split = {"accuracy": val["accuracy"], "mean": val["mean"], "hits": [r["hits"] for r in val["runs"]]}
    return {**reported, **{k: {VAL_SPLIT: v, **reported[k]} for k, v in per_split.items()}}


def best_schedule(rows: list[dict]) -> str | None:
    """The schedule with the highest val mean (the choosing split); None with fewer than two schedules."""
    if len(rows) < 2:
        return None
    return max(rows, key=lambda r: r["splits"][VAL_SPLIT]["mean"])["name"]


def _evaluator_sha(settings: CompareSettings) -> str | None:
    """SHA-256 of the evaluator file a scoring would use now (a changed default evaluator invalidates the cache)."""
    from iclevr.evaluation.evaluator import choose_evaluator_file, file_sha256

    path = choose_evaluator_file(settings.evaluator, settings.data.data_dir)
    return file_sha256(path) if path is not None and path.is_file() else None


def _summarise(name: str, runs: list[dict]) -> dict:
    """One schedule's row: accuracy per split (val first) over every training and sampling seed, loss, time."""
    splits = {}
    for split in STUDY_SPLITS:
        accs = [a for r in runs for a in r["accuracy"][split]]
        splits[split] = {"mean": statistics.fmean(accs), "std": statistics.pstdev(accs), "values": accs}
    return {
        "name": name,
        "splits": splits,
        "final_loss": statistics.fmean(r["final_loss"] for r in runs if r["final_loss"] is not None)
        if any(r["final_loss"] is not None for r in runs)
        else None,
        "train_wall_s": sum(r["train_wall_s"] for r in runs),
        "runs": runs,
    }


def _metrics(run_dir: Path) -> list[dict]:
    from iclevr.fileio import read_jsonl

    return read_jsonl(run_dir / "metrics.jsonl")  # a torn last row (a killed run) is left out


def _final_loss(run_dir: Path) -> float | None:
    losses = [m["loss"] for m in _metrics(run_dir) if "loss" in m]
    return losses[-1] if losses else None


def _train_wall(run_dir: Path, fallback: float) -> float:
    walls = [m["wall_s"] for m in _metrics(run_dir) if "wall_s" in m]
    return walls[-1] if walls else fallback


def check_names(text: str) -> list[str]:
    """Parse a comma-separated schedule list with a clear error for unknown names."""
    from iclevr.schedules import check_name

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--schedules is empty; name at least one schedule")
    return [check_name(n) for n in names]
