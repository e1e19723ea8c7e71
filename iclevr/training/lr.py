"""The learning rate as a pure function of training progress (diffusion training and evaluator training).

At every optimizer step the lr is set from scratch (nanoGPT's `get_lr(it)`; EDM2 schedules by images seen):

    lr = peak * lr_at(progress, warmup=warmup_ramp(step, warmup_steps), schedule=...)

- `progress` in [0, 1] is how much of the budget is used up: step / total steps for a step or epoch budget,
  elapsed seconds / budget seconds for a time-only budget (`run_progress`). Elapsed time only grows, so the
  lr of a time-budget run never rises after warm-up, however uneven the step times; and a resumed run
  continues the same path because the elapsed time of earlier sessions is saved with the state.
- The warm-up counts optimizer steps, whatever the budget: a linear ramp (step + 1) / warmup_steps that
  multiplies the schedule, so the lr is warm-up x schedule(progress), and schedule(progress) alone after it.
- `schedule`: "cosine" anneals from 1 at progress 0 to 0 at progress 1 (Loshchilov & Hutter 2017, eq. 5 with
  eta_min = 0); "constant" stays at 1.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "constant")


def warmup_ramp(step: int, warmup_steps: int) -> float:
    """The warm-up factor of 0-based optimizer step `step`: (step + 1) / warmup_steps, 1 once warmed up."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


def lr_at(progress: float, *, warmup: float, schedule: str) -> float:
    """LR multiplier in [0, 1] at `progress` in [0, 1] (clamped): the warm-up factor times the schedule."""
    p = min(1.0, max(0.0, progress))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * p))
    elif schedule == "constant":
        decay = 1.0
    else:
        raise ValueError(f'unknown lr schedule "{schedule}"; valid: {", ".join(SCHEDULES)}')
    return min(1.0, max(0.0, warmup)) * decay


def run_progress(step: int, elapsed_s: float, *, total_steps: int | None, budget_s: float | None) -> float:
    """Progress of a run: step / total_steps when it has a step budget, else elapsed_s / budget_s (time only)."""
    if total_steps:
        return step / total_steps
    if budget_s:
        return elapsed_s / budget_s
    raise ValueError("a run needs a step or a time budget")
