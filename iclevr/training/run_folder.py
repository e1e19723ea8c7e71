"""The run folder side of `iclevr train`: protection, metrics (jsonl + TensorBoard), snapshots, grids, progress bar,
and whether a run is finished.

Layout (see iclevr.weights): settings.json, metrics.jsonl, progress.json, tb/, samples/epoch-XXXX.png,
weights/{ema,model}.safetensors (inference weights with settings in the metadata) and state/step-XXXXXXXX.pt
(resumable training state, newest K kept, see iclevr.training.state).
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from iclevr.errors import UserError
from iclevr.settings import SamplerSettings, TrainSettings
from iclevr.training.plan import budget_reached

RUN_FILES = ("settings.json", "metrics.jsonl", "progress.json")
RUN_FOLDERS = ("state", "weights", "samples", "tb")
TB_SCALARS = ("loss", "lr", "grad_norm", "images_per_s")


def default_run_dir(settings: TrainSettings) -> Path:
    """settings.out, or checkpoints_root()/<preset>-<schedule>-s<seed>."""
    from iclevr.paths import checkpoints_root

    if settings.out:
        return Path(settings.out)
    return checkpoints_root() / f"{settings.preset}-{settings.schedule.name}-s{settings.train.seed}"


def prepare_run_dir(settings: TrainSettings, resume: bool, overwrite: bool) -> Path:
    """The run folder, protected: an existing run is only continued with resume or cleared with overwrite."""
    from iclevr.fileio import check_writable
    from iclevr.training.state import list_states

    run = default_run_dir(settings)
    if resume and overwrite:
        raise UserError("--resume and --overwrite conflict: continue the run or start it over, not both")
    states = list_states(run / "state")
    if overwrite:
        for name in RUN_FOLDERS:
            shutil.rmtree(run / name, ignore_errors=True)
        for name in RUN_FILES:
            (run / name).unlink(missing_ok=True)
    elif states and not resume:
        raise UserError(
            f"{run} already holds a training run (state {states[-1].name}); pass --resume {run} to "
            "continue it, or --overwrite to start it over"
        )
    elif resume and not states and (run / "weights" / "ema.safetensors").is_file():
        raise UserError(
            f"cannot resume {run}: it holds weights but no training state (state/ is empty), and a "
            "new run would replace them; train again with --overwrite or into a new --out folder"
        )
    return check_writable(run)


def check_finite_weights(run: Path, settings: TrainSettings, step: int, *nets) -> None:
    """Refuse to save weights holding nan or inf: the last saved state stays the newest, and resumable."""
    from iclevr.errors import TrainingInterrupted
    from iclevr.training.state import list_states

    flags = [torch.isfinite(p).all() for net in nets for p in net.parameters()]
    if bool(torch.stack(flags).all()):  # one host sync per save
        return
    states = list_states(run / "state")
    kept = f"the last good state {states[-1].name} is kept" if states else "no state was saved"
    raise TrainingInterrupted(
        f"the weights became non-finite (nan or inf) by step {step}; they were not saved, "
        f"{kept}; lower --lr (now {settings.train.lr:g}) or use --mixed-precision no, then "
        f"continue with `iclevr train --resume {run}`"
    )


def check_same_run(state: dict, settings: TrainSettings, path: Path) -> None:
    """Refuse to resume a state whose model or noise schedule differs from `settings`."""
    from pydantic import ValidationError

    saved = json.loads(state.get("settings", "{}"))
    for section in ("model", "schedule"):
        current = getattr(settings, section)
        try:  # through the settings class, so a field added since the state was saved takes its default
            before = type(current).model_validate(saved.get(section, {}))
        except ValidationError:
            before = None
        if before != current:
            raise UserError(
                f"cannot resume {path}: its {section} settings differ from the requested ones; resume "
                "without changing --preset/--schedule/--prediction-type, or start a new --out folder"
            )


class MetricsLog:
    """metrics.jsonl (one JSON object per log) and TensorBoard scalars; a resume drops rows past its step."""

    def __init__(self, run: Path, start_step: int, enabled: bool = True):
        from iclevr.fileio import atomic_write_text, read_jsonl

        self.path, self.writer = Path(run) / "metrics.jsonl", None
        if not enabled:
            return
        if start_step and self.path.is_file():  # rows logged after the state we resume from are replayed
            kept = [row for row in read_jsonl(self.path) if row.get("step", 0) <= start_step]  # torn row dropped
            # atomic: a full disk keeps the old log
            atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))
        elif not start_step:
            self.path.unlink(missing_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        # purge at step 0 too: a try killed before its first save left events behind
        self.writer = SummaryWriter(str(Path(run) / "tb"), purge_step=start_step)

    def log(self, row: dict) -> None:
        """Append one row (must hold 'step') to metrics.jsonl and its scalars to TensorBoard; a non-finite number
        is written as null (json.dumps would write Infinity or NaN, which strict JSON readers refuse)."""
        from iclevr.fileio import append_text

        if self.writer is None:
            return
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        append_text(self.path, json.dumps(row, allow_nan=False) + "\n")
        for key in TB_SCALARS:
            if row.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])
        self.writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()


def save_snapshot(
    run: Path,
    settings: TrainSettings,
    *,
    model,
    ema,
    optimizer,
    scaler,
    step: int,
    wall_s: float,
    steps_per_epoch: int,
    finished: bool = False,
    reason: str | None = None,
    raw_weights: bool = True,
) -> Path:
    """Write a resumable state (oldest rotated out), then weights/ema.safetensors (what sampling reads), the raw
    weights/model.safetensors if `raw_weights` (the loop: at the end only; the state holds them meanwhile) and
    progress.json, so a kill between the writes leaves the weights at or behind the newest state, never ahead
    of it. `wall_s` (training seconds over all sessions) is what a resumed time-budget run continues its LR from."""
    from iclevr.fileio import remove_stale_temps, write_json
    from iclevr.settings import to_json
    from iclevr.training.state import rng_states, save_state
    from iclevr.weights import save_weights

    check_finite_weights(run, settings, step, model, ema.model)  # never a NaN state saved as the "good" one
    state = {
        "step": step,
        "wall_s": wall_s,
        "settings": to_json(settings),
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler else None,
        "rng": rng_states(),
    }
    path = save_state(run / "state", state, settings.train.keep_states)  # first: weights never ahead of it
    meta = dict(
        model_cfg=settings.model,
        schedule_cfg=settings.schedule,
        sampler_cfg=settings.sampler,
        preset=settings.preset,
        step=step,
    )
    for name, net in (("ema", ema.model), ("model", model))[: 2 if raw_weights else 1]:
        remove_stale_temps(run / "weights" / f"{name}.safetensors")  # left by a killed earlier run
        save_weights(net, run / "weights" / f"{name}.safetensors", **meta)
    remove_stale_temps(run / "progress.json")
    write_json(
        run / "progress.json",
        {
            "step": step,
            "epoch": round(step / steps_per_epoch, 4),
            "steps_per_epoch": steps_per_epoch,
            "wall_s": round(wall_s, 2),
            "finished": finished,
            "stop_reason": reason,
            "state": path.name,
        },
    )
    return path


def grid_sampler(settings: TrainSettings) -> SamplerSettings:
    """The sampler of sample grids (train.sample_grids): "fast" swaps the run's sampler and steps for the
    default sampler at its default steps (guidance, seed and batch size stay the run's); "run" is the run's own."""
    if settings.train.sample_grids == "run":
        return settings.sampler
    default = SamplerSettings()
    return settings.sampler.model_copy(update={"sampler": default.sampler, "steps": default.steps})


def save_progress_grid(run: Path, name: str, ema_model, y: torch.Tensor, settings: TrainSettings, device) -> Path:
    """Sample the fixed conditions y (N, 24) from fixed per-image noise with the EMA weights; save a grid."""
    from iclevr.images import save_grid, to_output_size
    from iclevr.sampling import sample

    x0 = sample(
        ema_model, y, schedule=settings.schedule, sampler=grid_sampler(settings), device=device
    )  # (N, 3, S, S), seeds fixed by sampler.seed
    return save_grid(to_output_size(x0), Path(run) / "samples" / name, nrow=8)


@contextmanager
def train_bar(console, enabled: bool):
    """The training progress bar: epoch, bar, position (bar_position), loss, images/s, ETA; yields (progress, task)."""
    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

    from iclevr.progress import progress_bar

    columns = (
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        TextColumn("{task.fields[done]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[ips]} img/s"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with progress_bar(console, enabled=enabled, columns=columns) as progress:
        yield progress, progress.add_task("train", total=None, epoch=0, loss="-", ips="-", done="")


def bar_position(step: int, elapsed_s: float, total_steps: int | None, budget_s: float | None) -> tuple:
    """(completed, total, text) of the bar, following the budget that will stop the run: steps of a step budget;
    seconds of a time budget (whose step count is unknown ahead), shown as minutes used of the budget, never past
    it; with both, whichever is further along (a CPU run of 200 epochs under a 30-minute cap counts minutes)."""
    if total_steps and not budget_s:
        return step, total_steps, f"{step}/{total_steps}"
    used = min(elapsed_s, budget_s)
    if not total_steps:
        return used, budget_s, f"step {step}, {used / 60:.1f}/{budget_s / 60:g} min"
    # both: the share of the budget that is further along, in seconds of the time budget, so the bar (and its ETA)
    # moves continuously when the lead passes from one budget to the other
    done = max(step / total_steps, used / budget_s)
    text = (
        f"{step}/{total_steps} (cap {budget_s / 60:g} min)"
        if step / total_steps >= used / budget_s
        else f"step {step} of {total_steps}, {used / 60:.1f}/{budget_s / 60:g} min"
    )
    return min(done, 1.0) * budget_s, budget_s, text


def is_finished(run_dir: Path, settings: TrainSettings | None = None) -> bool:
    """True when `run_dir` holds weights of a finished run: one that reached the budget of `settings`, or
    (settings None) one that stopped at its own budget."""
    from iclevr.fileio import read_json

    run_dir = Path(run_dir)
    if not (run_dir / "progress.json").is_file() or not (run_dir / "weights" / "ema.safetensors").is_file():
        return False
    p = read_json(run_dir / "progress.json", "progress file")
    if settings is None:
        return bool(p.get("finished"))
    return budget_reached(settings.train, p["step"], p["steps_per_epoch"], p["wall_s"]) is not None
