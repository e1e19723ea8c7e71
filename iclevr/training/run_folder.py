"""The run folder side of `iclevr train`: protection, metrics (jsonl + TensorBoard), snapshots, grids, progress bar.

Layout (see iclevr.weights): settings.json, metrics.jsonl, progress.json, tb/, samples/epoch-XXXX.png,
weights/{ema,model}.safetensors (inference weights with settings in the metadata) and state/step-XXXXXXXX.pt
(resumable training state, newest K kept, see iclevr.training.state).
"""

from __future__ import annotations

import json
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import torch

from iclevr.errors import UserError
from iclevr.settings import SamplerSettings, TrainSettings

RUN_FILES = ("settings.json", "metrics.jsonl", "progress.json")
RUN_FOLDERS = ("state", "weights", "samples", "tb")
CPU_GRID_STEPS = 25  # progress grids off a GPU never run the seed's 1000 DDPM steps
TB_SCALARS = ("loss", "lr", "grad_norm", "images_per_s")


def default_run_dir(settings: TrainSettings) -> Path:
    """settings.out, or checkpoints_root()/<preset>-<schedule>-s<seed>."""
    from iclevr.weights import checkpoints_root

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
        raise UserError(f"{run} already holds a training run (state {states[-1].name}); pass --resume {run} to "
                        "continue it, or --overwrite to start it over")
    return check_writable(run)


def check_same_run(state: dict, settings: TrainSettings, path: Path) -> None:
    """Refuse to resume a state whose model or noise schedule differs from `settings`."""
    saved = json.loads(state.get("settings", "{}"))
    for section in ("model", "schedule"):
        now = json.loads(getattr(settings, section).model_dump_json())
        if saved.get(section) != now:
            raise UserError(f"cannot resume {path}: its {section} settings differ from the requested ones; resume "
                            "without changing --preset/--schedule/--prediction-type, or start a new --out folder")


def _row_step(line: str) -> float:
    """The step of one metrics.jsonl line; blank or torn lines (a write cut by power loss) count as past any
    step, so a resume drops them."""
    try:
        return float(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return float("inf")


class MetricsLog:
    """metrics.jsonl (one JSON object per log) and TensorBoard scalars; a resume drops rows past its step."""

    def __init__(self, run: Path, start_step: int, enabled: bool = True):
        self.path, self.writer = Path(run) / "metrics.jsonl", None
        if not enabled:
            return
        if start_step and self.path.is_file():  # rows logged after the state we resume from are replayed
            kept = [r for r in self.path.read_text().splitlines() if _row_step(r) <= start_step]
            self.path.write_text("".join(r + "\n" for r in kept))
        elif not start_step:
            self.path.unlink(missing_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run) / "tb"), purge_step=start_step or None)

    def log(self, row: dict) -> None:
        """Append one row (must hold 'step') to metrics.jsonl and its scalars to TensorBoard."""
        if self.writer is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for key in TB_SCALARS:
            if row.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])
        self.writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()


def save_snapshot(run: Path, settings: TrainSettings, *, model, ema, optimizer, lr_sched, scaler, step: int,
                  wall_s: float, total_steps: int | None, steps_per_epoch: int, finished: bool = False,
                  reason: str | None = None) -> Path:
    """Write a resumable state (oldest rotated out), then weights/{ema,model}.safetensors and progress.json,
    so a kill between the writes leaves the weights at or behind the newest state, never ahead of it."""
    from iclevr.weights import save_weights, write_json
    from iclevr.fileio import remove_stale_temps
    from iclevr.settings import to_json
    from iclevr.training.state import rng_states, save_state

    state = {"step": step, "wall_s": wall_s, "total_steps": total_steps, "settings": to_json(settings),
             "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
             "lr_scheduler": lr_sched.state_dict(), "scaler": scaler.state_dict() if scaler else None,
             "rng": rng_states()}
    path = save_state(run / "state", state, settings.train.keep_states)  # first: weights never ahead of it
    meta = dict(model_cfg=settings.model, schedule_cfg=settings.schedule, sampler_cfg=settings.sampler,
                preset=settings.preset, step=step)
    for name, net in (("ema", ema.model), ("model", model)):
        remove_stale_temps(run / "weights" / f"{name}.safetensors")  # left by a killed earlier run
        save_weights(net, run / "weights" / f"{name}.safetensors", **meta)
    remove_stale_temps(run / "progress.json")
    write_json(run / "progress.json", {"step": step, "epoch": round(step / steps_per_epoch, 4),
                                       "steps_per_epoch": steps_per_epoch, "wall_s": round(wall_s, 2),
                                       "finished": finished, "stop_reason": reason, "state": path.name})
    return path


def grid_sampler(settings: TrainSettings, device) -> SamplerSettings:
    """The sampler of progress grids: the run's, but a short DDIM off a GPU when it would take > 50 steps."""
    from iclevr.sampling import resolve_steps

    if device.type != "cuda" and resolve_steps(settings.sampler, settings.schedule) > 2 * CPU_GRID_STEPS:
        return settings.sampler.model_copy(update={"sampler": "ddim", "steps": CPU_GRID_STEPS})
    return settings.sampler


def save_progress_grid(run: Path, name: str, ema_model, y: torch.Tensor, settings: TrainSettings, device) -> Path:
    """Sample the fixed conditions y (N, 24) from fixed per-image noise with the EMA weights; save a grid."""
    from iclevr.sampling import sample, save_grid, to_output_size

    x0 = sample(ema_model, y, schedule=settings.schedule, sampler=grid_sampler(settings, device),
                device=device)  # (N, 3, S, S), seeds fixed by sampler.seed
    return save_grid(to_output_size(x0), Path(run) / "samples" / name, nrow=8)


@contextmanager
def progress_bar(console, enabled: bool):
    """A Rich progress bar: epoch, step/total, loss, images/s and ETA (yields (progress, task))."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[ips]} img/s"),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not enabled) as progress:
        yield progress, progress.add_task("train", total=None, epoch=0, loss="-", ips="-")


@contextmanager
def interrupt_flag():
    """Turn the first Ctrl-C into a flag checked between steps (a second one interrupts at once)."""
    flag = {"set": False}

    def handler(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler, KeyboardInterrupt is handled by the caller
        previous = None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
