"""Training: `train(settings) -> run_dir`, one readable loop on Hugging Face Accelerate.

Per optimizer step (Ho et al. 2020, Algorithm 1, with classifier-free guidance training of Ho & Salimans 2022):
  x0 ~ data, y its multi-hot labels, replaced by zeros (the null condition) with probability p_uncond
  t ~ U{0, T-1}, eps ~ N(0, I), x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps   (in fp32)
  loss = || model(x_t, t, y) - target ||^2,  target = eps, or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0
  (optionally weighted per sample by min(SNR, gamma) / SNR (eps) or / (SNR + 1) (v): Min-SNR, Hang et al. 2023)

Determinism by construction: the data order of epoch e is a permutation seeded from (seed, e), and every step
reseeds its noise, timesteps, label-dropout and flip draws from (seed, step, process), so a run resumed from any
saved state follows exactly the path of an uninterrupted one (bit-identical on CPU).

Run folder: see iclevr.weights. `accelerate launch --multi_gpu -m iclevr train ...` runs it data-parallel.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from iclevr.errors import TrainingInterrupted, UserError
from iclevr.settings import TrainLoopSettings, TrainSettings

MEASURE_STEPS = (1, 4)  # session steps between which the speed is measured (step 1 includes warm-up)


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
        raise UserError(f"batch size {cfg.batch_size} x {processes} process(es) x grad_accum {cfg.grad_accum} = "
                        f"{global_batch} images per step exceeds the {images} training images; lower --batch-size")
    steps_per_epoch = images // global_batch
    total = cfg.max_steps or (cfg.epochs * steps_per_epoch if cfg.epochs else None)  # max_steps wins over epochs
    return Plan(images, cfg.batch_size, processes, cfg.grad_accum, steps_per_epoch, total)


def budget_reached(cfg: TrainLoopSettings, step: int, steps_per_epoch: int, wall_s: float) -> str | None:
    """Why training stops at `step` (max_steps, epochs or time budget), or None to go on."""
    if cfg.max_steps and step >= cfg.max_steps:
        return f"max_steps={cfg.max_steps} reached"
    if cfg.epochs and not cfg.max_steps and step >= cfg.epochs * steps_per_epoch:
        return f"epochs={cfg.epochs} reached"
    if cfg.max_minutes and wall_s >= cfg.max_minutes * 60:
        return f"time budget of {cfg.max_minutes:g} min reached"
    return None


def lr_factor(step: int, warmup: int, total: int | None, kind: str) -> float:
    """LR multiplier at optimizer step `step`: linear warm-up, then cosine annealing to 0 over `total` or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or not total:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # Loshchilov & Hutter 2017, eq. 5 with eta_min = 0


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence), e.g. (seed, tag, step, rank)."""
    import numpy as np

    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch (CPU int64 (n,)), identical on every process."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, 1, epoch)))


def batch_indices(perm: torch.Tensor, i: int, k: int, rank: int, plan: Plan) -> torch.Tensor:
    """Indices of micro-batch k of step i (within the epoch) for process `rank`: disjoint slices of `perm`."""
    start = ((i * plan.accum + k) * plan.processes + rank) * plan.batch
    return perm[start:start + plan.batch]


def diffusion_loss(model, x0: torch.Tensor, y: torch.Tensor, alpha_bar: torch.Tensor, settings: TrainSettings,
                   g: torch.Generator) -> torch.Tensor:
    """The denoising loss of one batch (module docstring); every random draw comes from generator g."""
    cfg, B, dev = settings.train, x0.shape[0], x0.device
    t = torch.randint(0, alpha_bar.shape[0], (B,), generator=g, device=dev)  # (B,)
    eps = torch.randn(x0.shape, generator=g, device=dev, dtype=torch.float32)  # (B, 3, S, S)
    keep = (torch.rand(B, generator=g, device=dev) >= cfg.p_uncond).float()  # (B,) 0 = null condition
    flip = torch.rand(B, generator=g, device=dev) < 0.5
    if settings.data.flip:
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    ab = alpha_bar[t].view(B, 1, 1, 1)  # fp32: bf16 would round the first timesteps to no noise at all
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    target = eps if settings.schedule.prediction_type == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
    if cfg.channels_last:
        x_t = x_t.contiguous(memory_format=torch.channels_last)
    pred = model(x_t, t, y * keep[:, None]).float()  # (B, 3, S, S)
    per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
    if cfg.snr_gamma:
        snr = (ab / (1 - ab)).view(B)
        clipped = snr.clamp(max=cfg.snr_gamma)
        per_sample = per_sample * (clipped / snr if settings.schedule.prediction_type == "epsilon"
                                   else clipped / (snr + 1))
    return per_sample.mean()


def make_optimizer(model, cfg: TrainLoopSettings) -> torch.optim.Optimizer:
    """Adam or AdamW over `model`'s parameters as one fused kernel per step (CPU and CUDA support it)."""
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def unwrap(model):
    """The plain ConditionalUNet under DDP (.module) and torch.compile (._orig_mod) wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def is_finished(run_dir: Path, settings: TrainSettings) -> bool:
    """True when `run_dir` holds weights of a run that reached the budget of `settings`."""
    progress = Path(run_dir) / "progress.json"
    if not progress.is_file() or not (Path(run_dir) / "weights" / "ema.safetensors").is_file():
        return False
    p = json.loads(progress.read_text())
    return budget_reached(settings.train, p["step"], p["steps_per_epoch"], p["wall_s"]) is not None


def make_accelerator(cfg: TrainLoopSettings):
    """(Accelerator for the configured device and precision, note or None); mixed precision needs CUDA."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from iclevr.device import pick_device

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = pick_device(cfg.device)
    precision, note = cfg.mixed_precision, None
    if precision != "no" and device.type != "cuda":
        note = f"[yellow]note:[/] mixed precision {precision} needs a CUDA GPU; training in fp32 on {device.type}"
        precision = "no"
    if not distributed:
        AcceleratorState._reset_state(reset_partial_state=True)  # allow several train() calls in one process
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device.index)
    return Accelerator(cpu=device.type == "cpu", mixed_precision=precision), note


def agreed(accelerator, flag: bool) -> bool:
    """True if `flag` is set on any process (no collective in a single-process run)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "max").item())


def train(settings: TrainSettings, console=None, resume: bool = False, overwrite: bool = False) -> Path:
    """Train the conditional UNet of `settings` into its run folder and return it (module docstring)."""
    from rich.console import Console
    from torch.optim.lr_scheduler import LambdaLR

    from iclevr.data.course import load_kit, load_train_tensors, resolve_data_dir, to_model_range
    from iclevr.ema import EMA
    from iclevr.labels import encode_many
    from iclevr.model import build_model, count_parameters
    from iclevr.schedules import make_scheduler
    from iclevr.settings import write_settings
    from iclevr.training.run_folder import (MetricsLog, check_same_run, default_run_dir, interrupt_flag, prepare_run_dir,
                                 progress_bar, save_progress_grid, save_snapshot)
    from iclevr.training.state import list_states, load_latest

    cfg = settings.train
    accelerator, note = make_accelerator(cfg)
    main, rank, device = accelerator.is_main_process, accelerator.process_index, accelerator.device
    console = console if console is not None and main else Console(quiet=True)
    if note:
        console.print(note)
    run = prepare_run_dir(settings, resume, overwrite) if main else default_run_dir(settings)
    accelerator.wait_for_everyone()
    settings = settings.model_copy(update={"out": run})

    # --- data: the whole training set as one uint8 tensor, optionally on the device --------------------------
    with accelerator.main_process_first():  # renders the embedded kit / builds the cache once
        kit = load_kit(resolve_data_dir(settings.data.data_dir, console), settings.data.images_dir)
        images_u8, labels = load_train_tensors(kit, settings.model.sample_size, settings.data.cache)
    if cfg.data_on_device:
        images_u8, labels = images_u8.to(device), labels.to(device)  # (N, 3, S, S) uint8, (N, 24)
    plan = make_plan(cfg, len(images_u8), accelerator.num_processes)
    y_grid = encode_many((kit.splits.get("test") or list(kit.train.values()))[:32])  # fixed grid conditions

    # --- model, EMA, optimizer, LR schedule; resume from the newest state ------------------------------------
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    model = build_model(settings.model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    optimizer = make_optimizer(model, cfg)
    lr_sched = LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup_steps, plan.total_steps, cfg.lr_schedule))
    found = load_latest(run / "state") if resume else None
    if resume and not found:
        console.print(f"[dim]no training state in {run}/state: starting a new run[/]")
    start, wall0 = (found[0]["step"], found[0]["wall_s"]) if found else (0, 0.0)
    if found:
        check_same_run(found[0], settings, found[1])
        model.load_state_dict(found[0]["model"])
        ema.load_state_dict(found[0]["ema"])
        plan.total_steps = plan.total_steps or found[0]["total_steps"]
    net = torch.compile(model) if cfg.compile else model
    net, optimizer = accelerator.prepare(net, optimizer)
    ema.model.to(device)
    if found:
        restore_optimizer(found[0], optimizer, lr_sched, accelerator.scaler, cfg.lr, console)
        console.print(f"resuming {run} from {found[1].name} (epoch {start / plan.steps_per_epoch:.2f})")
    alpha_bar = make_scheduler(settings.schedule).alphas_cumprod.to(device, torch.float32)  # (T,)

    def snapshot(step: int, finished: bool = False, reason: str | None = None) -> None:
        if main:
            save_snapshot(run, settings, model=model, ema=ema, optimizer=optimizer, lr_sched=lr_sched,
                          scaler=accelerator.scaler, step=step, wall_s=wall0 + time.time() - t_session,
                          total_steps=plan.total_steps, steps_per_epoch=plan.steps_per_epoch, finished=finished,
                          reason=reason)

    def grid(name: str) -> None:
        if main:
            save_progress_grid(run, name, ema.model, y_grid, settings, device)

    t_session = time.time()
    if reason := budget_reached(cfg, start, plan.steps_per_epoch, wall0):
        console.print(f"nothing to train in {run}: {reason} at step {start}; raise --max-steps, --epochs or "
                      "--max-minutes to train further")
        return run
    if main:
        write_settings(settings, run)
    console.print(describe(settings, plan, count_parameters(model), device, run))

    # --- the loop ----------------------------------------------------------------------------------------------
    metrics = MetricsLog(run, start, enabled=main)
    step, perm_epoch, perm, saved_at, grid_at = start, -1, None, -1, -1
    loss_sum, norm_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step, checked lazily
    last_log, last_loss, last_lr, t_measure = (start, time.time()), None, cfg.lr, 0.0

    def check_finite() -> None:
        if (bad := int(bad_step.item())) >= 0:
            states = list_states(run / "state")
            kept = f"the last good state {states[-1]} is kept" if states else "no state was saved"
            raise TrainingInterrupted(f"loss became non-finite at step {bad} (epoch {bad // plan.steps_per_epoch})"
                                      f"; {kept}; lower --lr (now {cfg.lr:g}) or use --mixed-precision no, then "
                                      f"continue with `iclevr train --resume {run}`")

    def log() -> None:
        nonlocal last_log, last_loss, loss_sum, norm_sum
        n, now = step - last_log[0], time.time()
        mean_loss = (accelerator.reduce(loss_sum, "mean") / n).item()
        check_finite()
        last_loss = mean_loss
        if last_log[0] > start:  # not the session's first window: its step 0 carries warm-up (compile, allocation)
            aim_time_horizon(cfg, plan, step, wall0 + now - t_session, (now - last_log[1]) / n, accelerator)
        metrics.log({"step": step, "epoch": step // plan.steps_per_epoch, "loss": mean_loss,
                     "lr": last_lr, "grad_norm": (norm_sum / n).item(),
                     "images_per_s": n * plan.global_batch / max(now - last_log[1], 1e-9),
                     "wall_s": round(wall0 + now - t_session, 2)})
        if not console.is_terminal:  # logs redirected to a file: no live bar, so one line per log
            console.print(f"step {step} epoch {step // plan.steps_per_epoch} loss {mean_loss:.4f} lr {last_lr:.3g} "
                          f"{n * plan.global_batch / max(now - last_log[1], 1e-9):.1f} img/s")
        last_log, loss_sum, norm_sum = (step, now), torch.zeros_like(loss_sum), torch.zeros_like(norm_sum)

    try:
        with interrupt_flag() as interrupted, progress_bar(console, main) as (bar, task):
            while True:
                reason = budget_reached(cfg, step, plan.steps_per_epoch, wall0 + time.time() - t_session)
                if agreed(accelerator, reason is not None or interrupted["set"]):
                    reason = reason or "interrupted"
                    break
                epoch, i = divmod(step, plan.steps_per_epoch)
                if epoch != perm_epoch:
                    perm, perm_epoch = epoch_permutation(cfg.seed, epoch, plan.images).to(images_u8.device), epoch
                g = torch.Generator(device).manual_seed(mix_seed(cfg.seed, 2, step, rank))  # noise, t, dropout
                torch.manual_seed(mix_seed(cfg.seed, 3, step, rank))  # dropout inside the UNet, if any
                for k in range(plan.accum):
                    idx = batch_indices(perm, i, k, rank, plan)
                    x0 = to_model_range(images_u8[idx].to(device))  # (B, 3, S, S) in [-1, 1]
                    with accelerator.no_sync(net) if k < plan.accum - 1 else nullcontext():
                        loss = diffusion_loss(net, x0, labels[idx].to(device), alpha_bar, settings, g)
                        accelerator.backward(loss / plan.accum)
                    loss_sum += loss.detach().float() / plan.accum
                grad_norm = accelerator.clip_grad_norm_(net.parameters(), cfg.grad_clip or math.inf)
                last_lr = optimizer.param_groups[0]["lr"]  # the lr of this step, for the log
                optimizer.step()
                lr_sched.step()
                optimizer.zero_grad(set_to_none=True)
                ema.update(model, step)
                bad_step = torch.where(torch.isfinite(loss_sum) | (bad_step >= 0), bad_step, step)
                norm_sum += grad_norm.detach().float() if grad_norm is not None else 0.0
                step += 1

                if step - start == MEASURE_STEPS[0]:  # the speed after warm-up sets a time-only LR horizon
                    t_measure = synced_time(device)
                if step - start == MEASURE_STEPS[1]:
                    sec = (synced_time(device) - t_measure) / (MEASURE_STEPS[1] - MEASURE_STEPS[0])
                    speed_notes(sec, step, wall0 + time.time() - t_session, plan, settings, accelerator, console)
                if step % cfg.log_every == 0:
                    log()
                bar.update(task, completed=step, total=plan.total_steps, epoch=step // plan.steps_per_epoch,
                           loss="-" if last_loss is None else f"{last_loss:.4f}",
                           ips=f"{(step - start) * plan.global_batch / (time.time() - t_session):.1f}")
                done_epoch = step // plan.steps_per_epoch if step % plan.steps_per_epoch == 0 else 0
                if (done_epoch and cfg.checkpoint_every and done_epoch % cfg.checkpoint_every == 0) or \
                        (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0):
                    check_finite()
                    snapshot(step)
                    saved_at = step
                if done_epoch and cfg.sample_every and done_epoch % cfg.sample_every == 0:
                    grid(f"epoch-{done_epoch:04d}.png")
                    grid_at = step
    except KeyboardInterrupt:  # a second Ctrl-C, mid-step: the weights may be half-updated, so nothing is saved
        metrics.close()
        states = list_states(run / "state")
        raise TrainingInterrupted(f"interrupted during step {step + 1}; continue from the last saved state "
                                  f"({states[-1].name if states else 'none yet'}) with `iclevr train --resume "
                                  f"{run}`") from None
    except BaseException:
        metrics.close()
        raise

    # --- the end: final log, state, weights and grid --------------------------------------------------------
    try:
        if step > last_log[0]:
            log()
        check_finite()
    finally:
        metrics.close()
    finished = reason != "interrupted"
    if saved_at != step or finished:
        snapshot(step, finished=finished, reason=reason)
    if finished and grid_at != step:
        grid(f"epoch-{step // plan.steps_per_epoch:04d}.png" if step % plan.steps_per_epoch == 0
             else f"step-{step:08d}.png")
    accelerator.wait_for_everyone()
    if not finished:
        raise TrainingInterrupted(f"interrupted at step {step}; state saved in {run}/state; continue with "
                                  f"`iclevr train --resume {run}`")
    console.print(f"[green]done[/]: {reason} at step {step} (epoch {step / plan.steps_per_epoch:.2f}), "
                  f"loss {last_loss:.4f}; weights in {run}/weights")
    return run


def restore_optimizer(state: dict, optimizer, lr_sched, scaler, lr: float, console) -> None:
    """Load optimizer, LR schedule, grad scaler and RNG states; a changed peak `lr` takes effect from here."""
    from iclevr.training.state import set_rng_states

    optimizer.load_state_dict(state["optimizer"])
    lr_sched.load_state_dict(state["lr_scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    set_rng_states(state["rng"])
    if lr_sched.base_lrs[0] != lr:  # e.g. a lower --lr after a non-finite loss
        console.print(f"[yellow]note:[/] peak lr {lr_sched.base_lrs[0]:g} -> {lr:g} from step {state['step']}")
        lr_sched.base_lrs = [lr] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group["initial_lr"], group["lr"] = lr, lr * lr_sched.lr_lambdas[0](state["step"])


def describe(settings: TrainSettings, plan: Plan, params: int, device, run: Path) -> str:
    """The one-line summary printed before training."""
    cfg, S = settings.train, settings.model.sample_size
    budget = " / ".join(p for p in (f"{cfg.epochs} epochs" if cfg.epochs else "",
                                    f"{cfg.max_steps} steps" if cfg.max_steps else "",
                                    f"{cfg.max_minutes:g} min" if cfg.max_minutes else "") if p)
    return (f"{settings.preset}: {params / 1e6:.2f} M parameters at {S}x{S}, {plan.images} images, "
            f"{plan.global_batch} per step ({plan.batch} x {plan.processes} process(es) x {plan.accum} accumulated), "
            f"{plan.steps_per_epoch} steps/epoch, budget {budget}, {device.type}, lr {cfg.lr:g} ({cfg.optimizer}) "
            f"-> {run}")


def synced_time(device) -> float:
    """time.time() after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.time()


def aim_time_horizon(cfg: TrainLoopSettings, plan: Plan, step: int, wall_s: float, sec: float, accelerator) -> None:
    """Time-only budget: point the cosine LR horizon at the steps the minutes left allow at `sec` s/step.

    Re-aimed at every log, so the LR reaches 0 when the time runs out even if the speed measured on the first
    steps was off (otherwise a faster machine would run its last steps at lr 0, a slower one stop early)."""
    if cfg.max_steps or cfg.epochs or not cfg.max_minutes or sec <= 0:
        return
    left = torch.tensor(float(max(0, int((cfg.max_minutes * 60 - wall_s) / sec))), device=accelerator.device)
    plan.total_steps = step + int(accelerator.reduce(left, "min").item() if plan.processes > 1 else left)


def speed_notes(sec: float, step: int, wall_s: float, plan: Plan, settings: TrainSettings, accelerator,
                console) -> None:
    """Once the speed is measured: fix the LR horizon of a time-only budget; estimate a CPU run of `seed`."""
    cfg = settings.train
    if plan.total_steps is None:  # time budget only: cosine over the steps the budget is expected to allow
        aim_time_horizon(cfg, plan, step, wall_s, sec, accelerator)
        console.print(f"[dim]{sec:.2f} s/step: the {cfg.max_minutes:g} min budget allows about "
                      f"{plan.total_steps} steps; the LR schedule spans them[/]")
    if accelerator.device.type == "cpu" and settings.preset != "tiny":
        hours = sec * plan.total_steps / 3600
        console.print(f"[yellow]note:[/] the {settings.preset} preset runs at {sec:.1f} s/step on this CPU: "
                      f"{plan.total_steps} steps would take about {hours:,.0f} h; for a CPU run use --preset tiny")
