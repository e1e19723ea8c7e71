"""How a training run is cut into steps: batch geometry, budgets, the data order and the start/speed notes.

Everything here is a pure function of the settings, the data size and the step, so every process of a
data-parallel run (and every resumed session) derives the same plan, the same stop and the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from iclevr.errors import UserError
from iclevr.settings import CPU_PRESET, CPU_PRESETS, TrainLoopSettings, TrainSettings


@dataclass
class Plan:
    """How the data is cut into optimizer steps, and how many steps the budget allows (None = time only)."""

    images: int
    batch: int
    processes: int
    accum: int
    steps_per_epoch: int
    total_steps: int | None

    @property
    def global_batch(self) -> int:
        """Images per optimizer step over all processes and accumulation micro-batches."""
        return self.batch * self.processes * self.accum


def make_plan(cfg: TrainLoopSettings, images: int, processes: int) -> Plan:
    """Check budget and batch size against the data up front and derive steps per epoch and total steps."""
    if not (cfg.epochs or cfg.max_steps or cfg.max_minutes):
        raise UserError("no training budget: pass --epochs, --max-steps or --max-minutes")
    global_batch = cfg.batch_size * processes * cfg.grad_accum
    if global_batch > images:
        raise UserError(
            f"batch size {cfg.batch_size} x {processes} process(es) x grad_accum {cfg.grad_accum} = "
            f"{global_batch} images per step exceeds the {images} training images; lower --batch-size"
        )
    steps_per_epoch = images // global_batch
    total = cfg.max_steps or (cfg.epochs * steps_per_epoch if cfg.epochs else None)  # max_steps wins over epochs
    return Plan(images, cfg.batch_size, processes, cfg.grad_accum, steps_per_epoch, total)


def budget_s(cfg: TrainLoopSettings) -> float | None:
    """The time budget in seconds, or None."""
    return cfg.max_minutes * 60 if cfg.max_minutes else None


def budget_reached(cfg: TrainLoopSettings, step: int, steps_per_epoch: int, wall_s: float) -> str | None:
    """Why training stops at `step` (max_steps, epochs or time budget), or None to go on."""
    if cfg.max_steps and step >= cfg.max_steps:
        return f"max_steps={cfg.max_steps} reached"
    if cfg.epochs and not cfg.max_steps and step >= cfg.epochs * steps_per_epoch:
        return f"epochs={cfg.epochs} reached"
    if cfg.max_minutes and wall_s >= cfg.max_minutes * 60:
        return f"time budget of {cfg.max_minutes:g} min reached"
    return None


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch (CPU int64 (n,)), identical on every process."""
    from iclevr.seeding import mix_seed

    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, 1, epoch)))


def batch_indices(perm: torch.Tensor, i: int, k: int, rank: int, plan: Plan) -> torch.Tensor:
    """Indices of micro-batch k of step i (within the epoch) for process `rank`: disjoint slices of `perm`."""
    start = ((i * plan.accum + k) * plan.processes + rank) * plan.batch
    return perm[start : start + plan.batch]


def describe(settings: TrainSettings, plan: Plan, params: int, device, run: Path) -> str:
    """The one-line summary printed before training."""
    cfg, S = settings.train, settings.model.sample_size
    budget = " / ".join(
        p
        for p in (
            f"{cfg.epochs} epochs" if cfg.epochs else "",
            f"{cfg.max_steps} steps" if cfg.max_steps else "",
            f"{cfg.max_minutes:g} min" if cfg.max_minutes else "",
        )
        if p
    )
    budget += ", whichever comes first" if " / " in budget else ""
    return (
        f"{settings.preset}: {params / 1e6:.2f} M parameters at {S}x{S}, {plan.images} images, "
        f"{plan.global_batch} per step ({plan.batch} x {plan.processes} process(es) x {plan.accum} accumulated), "
        f"{plan.steps_per_epoch} steps/epoch, budget {budget}, {device.type}, lr {cfg.lr:g} ({cfg.optimizer}) "
        f"-> {run}"
    )


def speed_notes(sec: float, step: int, wall_s: float, plan: Plan, settings: TrainSettings, device, console) -> None:
    """Once the speed is measured (`sec` s/step at `step`, `wall_s` used): the steps a time-only budget
    allows, and how long a CPU run of a large preset would take."""
    cfg = settings.train
    total = plan.total_steps
    if sec <= 0:  # a clock too coarse to time three steps: nothing to estimate
        return
    allowed = step + max(0, int((cfg.max_minutes * 60 - wall_s) / sec)) if cfg.max_minutes else None
    if total is None:  # time budget only: an estimate for the reader; the lr follows the elapsed time
        total = allowed
        console.print(
            f"[dim]{sec:.2f} s/step: the {cfg.max_minutes:g} min budget allows about {total} steps; "
            "the LR schedule follows the elapsed time[/]"
        )
    elif allowed is not None and allowed < total:  # the time cap, not the step budget, will stop this run
        console.print(
            f"[yellow]note:[/] at {sec:.2f} s/step the {cfg.max_minutes:g} min budget stops this run at "
            f"about step {allowed:,} (epoch {allowed / plan.steps_per_epoch:.1f}) of the {total:,} its step "
            "budget asks for; the progress bar counts minutes, and the learning rate, which follows the "
            "step budget, will still be high there. For the whole step budget: --max-minutes none"
        )
    if device.type == "cpu" and settings.preset not in CPU_PRESETS:
        hours = sec * total / 3600
        console.print(
            f"[yellow]note:[/] the {settings.preset} preset runs at {sec:.1f} s/step on this CPU: "
            f"{total} steps would take about {hours:,.0f} h; for a CPU run use --preset {CPU_PRESET}"
        )
