"""Training: `train(settings) -> run_dir`, one readable loop on Hugging Face Accelerate.

Per optimizer step (Ho et al. 2020, Algorithm 1, with classifier-free guidance training of Ho & Salimans 2022):
  x0 ~ data, y its multi-hot labels, replaced by zeros (the null condition) with probability p_uncond
  t ~ U{0, T-1}, eps ~ N(0, I), x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps   (in fp32)
  loss = || model(x_t, t, y) - target ||^2,  target = eps, or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0
  (optionally weighted per sample by min(SNR, gamma) / SNR (eps) or / (SNR + 1) (v): Min-SNR, Hang et al. 2023)
Two optional levers: train.immiscible re-pairs the batch's eps with its x0 by least total distance (Li et al.
2024, iclevr.training.noise); model.self_condition feeds the model its own x0 estimate half the time (Chen,
Zhang & Hinton 2022; self_condition_input below).

Determinism by construction: the data order of epoch e is a permutation seeded from (seed, e), and every step
reseeds its noise, timesteps, label-dropout and flip draws from (seed, step, process), so a run resumed from any
saved state follows exactly the path of an uninterrupted one (bit-identical on CPU). The learning rate is set
at every step from the run's progress (iclevr.training.lr): steps done of a step budget, or elapsed seconds of a
time budget, the elapsed time of earlier sessions included, so it never rises after warm-up.

Run folder: see iclevr.weights. `accelerate launch --multi_gpu -m iclevr train ...` runs it data-parallel.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from iclevr.errors import EXIT_CTRL_C, EXIT_RESUMABLE, TrainingInterrupted, TrainingStopped, WriteError
from iclevr.sampling import clips_x0, predict_x0
from iclevr.settings import TrainLoopSettings, TrainSettings
from iclevr.training.noise import immiscible_permutation
from iclevr.training.plan import (
    batch_indices,
    budget_reached,
    budget_s,
    describe,
    epoch_permutation,
    make_plan,
    speed_notes,
)

MEASURE_STEPS = (1, 4)  # session steps between which the speed is measured (step 1 includes warm-up)


def diffusion_loss(
    model, x0: torch.Tensor, y: torch.Tensor, alpha_bar: torch.Tensor, settings: TrainSettings, g: torch.Generator
) -> torch.Tensor:
    """The denoising loss of one batch (module docstring); every random draw comes from generator g."""
    cfg, B, dev = settings.train, x0.shape[0], x0.device
    t = torch.randint(0, alpha_bar.shape[0], (B,), generator=g, device=dev)  # (B,)
    eps = torch.randn(x0.shape, generator=g, device=dev, dtype=torch.float32)  # (B, 3, S, S)
    keep = (torch.rand(B, generator=g, device=dev) >= cfg.p_uncond).float()  # (B,) 0 = null condition
    flip = torch.rand(B, generator=g, device=dev) < 0.5
    if settings.data.flip:
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    if cfg.immiscible:  # pair each image with a nearby noise sample; the target is that re-assigned eps
        eps = eps[immiscible_permutation(x0, eps)]
    ab = alpha_bar[t].view(B, 1, 1, 1)  # fp32: bf16 would round the first timesteps to no noise at all
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    target = eps if settings.schedule.prediction_type == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
    if cfg.channels_last:
        x_t = x_t.contiguous(memory_format=torch.channels_last)
    y = y * keep[:, None]
    if settings.model.self_condition:
        x0_self = self_condition_input(model, x_t, t, y, ab, settings.schedule.prediction_type, g)
        pred = model(x_t, t, y, x0_self=x0_self).float()  # (B, 3, S, S)
    else:
        pred = model(x_t, t, y).float()  # (B, 3, S, S)
    per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
    if cfg.snr_gamma:
        snr = (ab / (1 - ab)).view(B)
        clipped = snr.clamp(max=cfg.snr_gamma)
        per_sample = per_sample * (
            clipped / snr if settings.schedule.prediction_type == "epsilon" else clipped / (snr + 1)
        )
    return per_sample.mean()


def self_condition_input(
    model,
    x_t: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    ab: torch.Tensor,
    prediction_type: str,
    g: torch.Generator,
) -> torch.Tensor:
    """x0_self for a self-conditioned training pass (Chen, Zhang & Hinton 2022, "Analog Bits", section 3).

    With probability 1/2 per optimizer step (self_condition_coin), the model's own x0 estimate from a first pass with
    x0_self = zeros, without gradient, so the model learns to refine an estimate like the one the sampling
    loop feeds back; otherwise zeros, so it also learns the first sampling step (which has no estimate).
    The estimate is clipped to [-1, 1] like the sampling loop's (clip_x0): near t = T, eps-prediction's
    x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) is unbounded.
    """
    zeros = torch.zeros_like(x_t)  # (B, 3, S, S)
    if not self_condition_coin(g):
        return zeros
    with torch.no_grad():
        out = model(x_t, t, y, x0_self=zeros).float()  # (B, 3, S, S)
    from iclevr.model import unwrap

    x0 = predict_x0(x_t, out, ab, prediction_type)
    return x0.clamp(-1, 1) if clips_x0(unwrap(model)) else x0  # latents are not bounded


def self_condition_coin(g: torch.Generator) -> bool:
    """The batch's self-conditioning coin (True = feed the estimate), drawn on the host from g's seed: a draw
    made on the GPU and branched on in Python would wait for the GPU at every step."""
    import random

    from iclevr.seeding import mix_seed

    return random.Random(mix_seed(g.initial_seed(), 4)).random() < 0.5


def make_optimizer(model, cfg: TrainLoopSettings) -> torch.optim.Optimizer:
    """Adam or AdamW over `model`'s parameters as one fused kernel per step (CUDA, and CPU since torch 2.4:
    pyproject's floor); built once the parameters are on their device."""
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def make_accelerator(cfg: TrainLoopSettings):
    """(Accelerator for the configured device and precision, note or None); mixed precision needs CUDA, and bf16
    falls back to fp16 where the GPU lacks native bf16 (iclevr.device.native_bf16)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from iclevr.device import cuda_speed_defaults, native_bf16, pick_device

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = pick_device(cfg.device)
    precision, notes = cfg.mixed_precision, []
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")  # set by `accelerate launch --mixed_precision`
    if launched and launched != precision:
        notes.append(
            f"[yellow]note:[/] accelerate launch asks for mixed precision {launched}; train.mixed_precision "
            f"= {precision} (preset, config or --mixed-precision) is used"
        )
    if precision != "no" and device.type != "cuda":
        notes.append(
            f"[yellow]note:[/] mixed precision {precision} needs a CUDA GPU; training in fp32 on {device.type}"
        )
        precision = "no"
    if precision == "bf16" and not native_bf16(device):
        notes.append("[yellow]note:[/] this GPU has no native bf16 (compute capability < 8.0); training in fp16")
        precision = "fp16"
    if device.type == "cuda":
        cuda_speed_defaults()
    if not distributed:
        AcceleratorState._reset_state(reset_partial_state=True)  # allow several train() calls in one process
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device.index)
    return Accelerator(cpu=device.type == "cpu", mixed_precision=precision), "\n".join(notes) or None


def control_group(accelerator):
    """The process group for the loop's small decisions (time, stop, finiteness): gloo, on the CPU, so agreeing
    never waits for the GPU; None (the default group) when that is gloo already or there is one process."""
    import torch.distributed as dist

    if accelerator.num_processes == 1 or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def host_reduce(accelerator, values: list[float], op: str, group=None) -> list[float]:
    """`values` reduced ("max" or "min") over all processes as a CPU collective: no tensor on the GPU, so no
    host synchronisation with its queue (a CUDA tensor read back with .tolist() would wait for every queued step)."""
    if accelerator.num_processes == 1:
        return values
    import torch.distributed as dist

    both = torch.tensor(values, dtype=torch.float64)  # CPU
    dist.all_reduce(both, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN, group=group)
    return both.tolist()


def agree(accelerator, elapsed_s: float, stop: bool, group=None) -> tuple[float, bool]:
    """(the furthest elapsed time, whether any process asks to stop) over all processes: one CPU collective per
    step (host_reduce), none in a single-process run, so every process sets the same lr and stops at the same step."""
    elapsed_s, stop = host_reduce(accelerator, [elapsed_s, float(stop)], "max", group)
    return elapsed_s, bool(stop)


def train(
    settings: TrainSettings,
    console=None,
    resume: bool = False,
    overwrite: bool = False,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Path:
    """Train the conditional UNet of `settings` into its run folder and return it (module docstring).

    The main process holds the run folder's writer lock throughout (iclevr.training.lock), taken before
    anything in the folder is touched, so a second `train` into the same folder stops with one line.
    `clock` (seconds) measures the time budget, the elapsed time that drives its LR, and the logged speeds.
    Model, optimizer and accelerator are freed before it returns (reference cycles held them until a gc)."""
    import gc

    from iclevr.training.lock import run_lock
    from iclevr.training.run_folder import default_run_dir

    try:
        with run_lock(default_run_dir(settings), enabled=os.environ.get("RANK", "0") == "0"):  # rank 0 only
            return _train(settings, console, resume, overwrite, clock)
    finally:  # the next run (a study, gpu_check's second measurement) starts from free GPU memory
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _train(settings: TrainSettings, console, resume: bool, overwrite: bool, clock: Callable[[], float]) -> Path:
    """The body of train(), run with the writer lock held."""
    from rich.console import Console

    from iclevr.autoencoder import FILE_NAME as AE_FILE
    from iclevr.autoencoder import load_autoencoder
    from iclevr.data.course import load_kit
    from iclevr.data.kits import resolve_data_dir
    from iclevr.ema import EMA
    from iclevr.labels import check_object_counts, encode_many
    from iclevr.model import build_model, count_parameters
    from iclevr.schedules import make_scheduler
    from iclevr.seeding import mix_seed
    from iclevr.settings import write_settings
    from iclevr.training.design import init_weights, prepare_autoencoder, training_tensors, x0_batch
    from iclevr.training.lr import lr_at, run_progress, warmup_ramp
    from iclevr.training.run_folder import (
        MetricsLog,
        bar_position,
        check_same_run,
        default_run_dir,
        prepare_run_dir,
        save_progress_grid,
        save_snapshot,
        train_bar,
    )
    from iclevr.training.signals import interrupt_flag, stop_cause
    from iclevr.training.state import list_states, load_latest

    cfg = settings.train
    accelerator, note = make_accelerator(cfg)
    main, rank, device = accelerator.is_main_process, accelerator.process_index, accelerator.device
    control = control_group(accelerator)
    console = console if console is not None and main else Console(quiet=True)
    if note:
        console.print(note)
    run = prepare_run_dir(settings, resume, overwrite) if main else default_run_dir(settings)
    if main:  # latent: the autoencoder is copied into the run folder and its hash recorded
        settings = prepare_autoencoder(settings, run, console)
    accelerator.wait_for_everyone()
    if not main:
        settings = prepare_autoencoder(settings, run, console)  # the copy exists now: only reads it
    settings = settings.model_copy(update={"out": run})

    # --- data: the whole training set as one uint8 tensor, optionally on the device --------------------------
    with accelerator.main_process_first():  # renders the embedded kit / builds the cache once
        kit = load_kit(resolve_data_dir(settings.data.data_dir, console), settings.data.images_dir)
        images_u8, labels = training_tensors(kit, settings, run, console)  # images (uint8) or latents
    if settings.model.condition == "tokens":
        check_object_counts(labels, "training scene")
    if cfg.data_on_device:
        images_u8, labels = images_u8.to(device), labels.to(device)  # (N, C, H, W), (N, 24)
    plan = make_plan(cfg, len(images_u8), accelerator.num_processes)
    y_grid = encode_many((kit.splits.get("test") or list(kit.train.values()))[:32])  # fixed grid conditions

    # --- model, EMA, optimizer; resume from the newest state (its step and elapsed time fix the LR path) -------
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    model = build_model(settings.model)
    if settings.model.design == "latent":  # decodes the progress grids; not trained, not saved with the UNet
        model.attach_autoencoder(load_autoencoder(run / AE_FILE, device))
    if settings.init_from and not (resume and list_states(run / "state")):
        init_weights(model, settings, console)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    model.to(device)  # before the optimizer: a fused one checks its parameters' device when it is built
    optimizer = make_optimizer(model, cfg)
    found = load_latest(run / "state") if resume else None
    if resume and not found:
        console.print(f"[dim]no training state in {run}/state: starting a new run[/]")
    start, wall0 = (found[0]["step"], found[0]["wall_s"]) if found else (0, 0.0)
    if found:
        check_same_run(found[0], settings, found[1])
        model.load_state_dict(found[0]["model"])
        ema.load_state_dict(found[0]["ema"])
    net, optimizer = accelerator.prepare(model, optimizer)  # DDP wraps the plain model ...
    if cfg.compile:  # ... and is compiled whole, so the gradient all-reduce of each bucket overlaps backward
        net = torch.compile(net)
    ema.model.to(device)
    if found:
        restore_optimizer(found[0], optimizer, accelerator.scaler, cfg.lr, console)
        console.print(f"resuming {run} from {found[1].name} (epoch {start / plan.steps_per_epoch:.2f})")
    alpha_bar = make_scheduler(settings.schedule).alphas_cumprod.to(device, torch.float32)  # (T,)

    def elapsed() -> float:  # seconds of training over all sessions of this run
        return wall0 + clock() - t_session

    def snapshot(step: int, finished: bool = False, reason: str | None = None) -> None:
        if main:
            try:
                save_snapshot(
                    run,
                    settings,
                    model=model,
                    ema=ema,
                    optimizer=optimizer,
                    scaler=accelerator.scaler,
                    step=step,
                    wall_s=elapsed(),
                    steps_per_epoch=plan.steps_per_epoch,
                    finished=finished,
                    reason=reason,
                    raw_weights=reason is not None,
                )  # raw: at the end
            except WriteError as e:  # a full disk or a permission: the files already written stay as they were
                raise WriteError(f"{e}; once fixed, continue with `iclevr train --resume {run}`") from None

    def grid(name: str) -> None:
        if main and cfg.sample_grids != "off":
            save_progress_grid(run, name, ema.model, y_grid, settings, device)

    t_session = clock()
    if reason := budget_reached(cfg, start, plan.steps_per_epoch, wall0):
        console.print(
            f"nothing to train in {run}: {reason} at step {start}; raise --max-steps, --epochs or "
            "--max-minutes to train further"
        )
        return run
    if main:
        write_settings(settings, run)
    console.print(describe(settings, plan, count_parameters(model), device, run))

    # --- the loop ----------------------------------------------------------------------------------------------
    metrics = MetricsLog(run, start, enabled=main)
    step, perm_epoch, perm, saved_at, grid_at = start, -1, None, -1, -1
    loss_sum, norm_sum, norm_bad = (torch.zeros((), device=device) for _ in range(3))  # norm_bad: skipped steps
    bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step, checked lazily
    last_log, last_loss, lr, t_measure = (start, clock()), None, cfg.lr, 0.0

    def check_finite() -> None:  # all processes agree: a NaN on one rank reaches every rank's weights (all-reduce)
        mine = int(bad_step.item())
        bad = host_reduce(accelerator, [mine if mine >= 0 else math.inf], "min", control)[0]
        if bad < math.inf and (bad := int(bad)) >= 0:
            states = list_states(run / "state")
            kept = f"the last good state {states[-1]} is kept" if states else "no state was saved"
            raise TrainingInterrupted(
                f"loss became non-finite at step {bad} (epoch {bad // plan.steps_per_epoch})"
                f"; {kept}; lower --lr (now {cfg.lr:g}) or use --mixed-precision no, then "
                f"continue with `iclevr train --resume {run}`"
            )

    def log() -> None:
        nonlocal last_log, last_loss, loss_sum, norm_sum, norm_bad
        n, now = step - last_log[0], clock()
        mean_loss = (accelerator.reduce(loss_sum, "mean") / n).item()
        check_finite()
        last_loss, ips = mean_loss, n * plan.global_batch / max(now - last_log[1], 1e-9)
        skipped = int(norm_bad.item())  # fp16 steps the GradScaler skipped (inf norm): not in the mean
        metrics.log(
            {
                "step": step,
                "epoch": step // plan.steps_per_epoch,
                "loss": mean_loss,
                "lr": lr,
                "grad_norm": (norm_sum / (n - skipped)).item() if n > skipped else None,
                "skipped_steps": skipped,
                "images_per_s": ips,
                "wall_s": round(wall0 + now - t_session, 2),
            }
        )
        if not console.is_terminal:  # logs redirected to a file: no live bar, so one line per log
            console.print(
                f"step {step} epoch {step // plan.steps_per_epoch} loss {mean_loss:.4f} lr {lr:.3g} {ips:.1f} img/s"
            )
        last_log, loss_sum, norm_sum, norm_bad = (step, now), *(torch.zeros_like(loss_sum) for _ in range(3))

    try:
        with interrupt_flag() as interrupted, train_bar(console, main) as (bar, task):
            while True:
                elapsed_s, stop = agree(accelerator, elapsed(), interrupted["set"], control)
                reason = budget_reached(cfg, step, plan.steps_per_epoch, elapsed_s) or ("interrupted" if stop else None)
                if reason:
                    break
                progress = run_progress(step, elapsed_s, total_steps=plan.total_steps, budget_s=budget_s(cfg))
                lr = cfg.lr * lr_at(progress, warmup=warmup_ramp(step, cfg.warmup_steps), schedule=cfg.lr_schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                epoch, i = divmod(step, plan.steps_per_epoch)
                if epoch != perm_epoch:
                    perm, perm_epoch = epoch_permutation(cfg.seed, epoch, plan.images).to(images_u8.device), epoch
                g = torch.Generator(device).manual_seed(mix_seed(cfg.seed, 2, step, rank))  # noise, t, dropout
                torch.manual_seed(mix_seed(cfg.seed, 3, step, rank))  # dropout inside the UNet, if any
                for k in range(plan.accum):
                    idx = batch_indices(perm, i, k, rank, plan)
                    x0 = x0_batch(images_u8, idx, device)  # (B, C, H, W): images in [-1, 1] or latents
                    with accelerator.no_sync(net) if k < plan.accum - 1 else nullcontext():
                        loss = diffusion_loss(net, x0, labels[idx].to(device), alpha_bar, settings, g)
                        accelerator.backward(loss / plan.accum)
                    loss_sum += loss.detach().float() / plan.accum
                grad_norm = accelerator.clip_grad_norm_(net.parameters(), cfg.grad_clip or math.inf)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                ema.update(model, step)
                bad_step = torch.where(torch.isfinite(loss_sum) | (bad_step >= 0), bad_step, step)
                if grad_norm is not None:
                    norm = grad_norm.detach().float()
                    norm_sum += torch.where(torch.isfinite(norm), norm, 0.0)
                    norm_bad += ~torch.isfinite(norm)
                step += 1

                if step - start == MEASURE_STEPS[0]:  # the speed after warm-up (compile, allocation)
                    t_measure = synced_time(device, clock)
                if step - start == MEASURE_STEPS[1]:
                    sec = (synced_time(device, clock) - t_measure) / (MEASURE_STEPS[1] - MEASURE_STEPS[0])
                    speed_notes(sec, step, elapsed(), plan, settings, device, console)
                if step % cfg.log_every == 0:
                    log()
                completed, total, done = bar_position(step, elapsed(), plan.total_steps, budget_s(cfg))
                bar.update(
                    task,
                    completed=completed,
                    total=total,
                    done=done,
                    epoch=step // plan.steps_per_epoch,
                    loss="-" if last_loss is None else f"{last_loss:.4f}",
                    ips=f"{(step - start) * plan.global_batch / max(clock() - t_session, 1e-9):.1f}",
                )
                done_epoch = step // plan.steps_per_epoch if step % plan.steps_per_epoch == 0 else 0
                if (done_epoch and cfg.checkpoint_every and done_epoch % cfg.checkpoint_every == 0) or (
                    cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0
                ):
                    check_finite()
                    snapshot(step)
                    saved_at = step
                if done_epoch and cfg.sample_every and done_epoch % cfg.sample_every == 0:
                    grid(f"epoch-{done_epoch:04d}.png")
                    grid_at = step
    except KeyboardInterrupt:  # a second Ctrl-C, mid-step: the weights may be half-updated, so nothing is saved
        metrics.close()
        states = list_states(run / "state")
        raise TrainingInterrupted(
            f"interrupted during step {step + 1}; continue from the last saved state "
            f"({states[-1].name if states else 'none yet'}) with `iclevr train --resume "
            f"{run}`",
            exit_code=EXIT_CTRL_C,
        ) from None
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
        grid(
            f"epoch-{step // plan.steps_per_epoch:04d}.png"
            if step % plan.steps_per_epoch == 0
            else f"step-{step:08d}.png"
        )
    accelerator.wait_for_everyone()
    if not finished:
        raise TrainingStopped(
            f"{stop_cause(interrupted)} at step {step}; state saved in {run}/state; continue "
            f"with `iclevr train --resume {run}` (exit code {EXIT_RESUMABLE}: resumable)"
        )
    console.print(
        f"[green]done[/]: {reason} at step {step} (epoch {step / plan.steps_per_epoch:.2f}), "
        f"loss {last_loss:.4f}; weights in {run}/weights"
    )
    return run


def restore_optimizer(state: dict, optimizer, scaler, lr: float, console) -> None:
    """Load optimizer, grad scaler and RNG states; a changed peak `lr` takes effect from here (noted)."""
    import json

    from iclevr.training.state import set_rng_states

    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    set_rng_states(state["rng"])
    before = json.loads(state.get("settings", "{}")).get("train", {}).get("lr", lr)
    if before != lr:  # e.g. a lower --lr after a non-finite loss
        console.print(f"[yellow]note:[/] peak lr {before:g} -> {lr:g} from step {state['step']}")


def synced_time(device, clock: Callable[[], float]) -> float:
    """clock() after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock()
