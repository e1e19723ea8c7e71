"""`iclevr autoencoder train`: fit the latent design's AutoencoderKL on a kit's training images.

Per step (Rombach et al. 2022, section 3 and appendix G, without the adversarial term):
  x0 ~ training images at 64x64 in [-1, 1];  q(z | x0) = N(mu, sigma^2) from the encoder;  z = mu + sigma eps
  loss = |decode(z) - x0|_1 (mean)  +  kl_weight * KL(q(z | x0) || N(0, I)) (mean over the batch)
AdamW at a peak lr with a warm-up and cosine decay over the step or time budget (iclevr.training.lr), the data
order a permutation seeded from (seed, epoch), each step's noise from (seed, step): a resumed run follows the
path of an uninterrupted one. A fixed, seeded set of `heldout` images is never trained on; at the end the run
measures reconstruction PSNR on it and the latent scale factor 1 / std(mu), and writes autoencoder.safetensors.

Run folder: settings.json, metrics.jsonl, state/step-XXXXXXXX.pt (resumable, newest 2 kept),
autoencoder.safetensors (the inference file), report.json (steps, minutes, PSNR, scale factor).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from pydantic import Field

from iclevr.autoencoder import FILE_NAME, AutoencoderSettings, build_autoencoder
from iclevr.errors import TrainingStopped, UserError
from iclevr.settings import DataSettings, Section


class AutoencoderTrainSettings(Section):
    """Settings of `iclevr autoencoder train`."""

    data: DataSettings = Field(default_factory=DataSettings, description="Training images (the kit).")
    model: AutoencoderSettings = Field(default_factory=AutoencoderSettings, description="The AutoencoderKL.")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps to train (wins over the time budget).")
    max_minutes: float | None = Field(30.0, gt=0, description="Wall-clock budget in minutes (stops cleanly).")
    batch_size: int = Field(32, gt=0, description="Images per optimizer step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    warmup_steps: int = Field(100, ge=0, description="Linear LR warm-up steps.")
    kl_weight: float = Field(1e-6, ge=0, description="Weight of the KL term (LDM's KL-f4 autoencoders: 1e-6).")
    heldout: int = Field(500, ge=50, description="Training images held out (never trained on) for PSNR and KID.")
    seed: int = Field(0, ge=0, description="Seed of weights, held-out split, data order and noise.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    checkpoint_every_steps: int = Field(200, gt=0, description="Steps between resumable states.")
    log_every: int = Field(25, gt=0, description="Steps between loss logs.")
    out: Path | None = Field(None, description="Run folder; empty = checkpoints/autoencoder-s<seed>.")


def run_dir(settings: AutoencoderTrainSettings) -> Path:
    """settings.out, or checkpoints_root()/autoencoder-s<seed>."""
    from iclevr.paths import checkpoints_root

    return Path(settings.out) if settings.out else checkpoints_root() / f"autoencoder-s{settings.seed}"


def heldout_split(n: int, heldout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out indices, training indices) of n images: a permutation seeded by `seed`, the first `heldout`."""
    from iclevr.seeding import mix_seed

    if heldout >= n:
        raise UserError(f"the kit has {n} training images; --heldout {heldout} leaves none to train on")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, 11)))
    return perm[:heldout].sort().values, perm[heldout:]


def vae_loss(vae, x0: torch.Tensor, kl_weight: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, L1 term) of one batch x0 (B, 3, R, R) in [-1, 1]; the posterior sample's noise comes from g."""
    post = vae.encode(x0).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=g, device=x0.device)  # (B, C, r, r)
    rec = vae.decode(z).sample  # (B, 3, R, R)
    l1 = (rec - x0).abs().mean()
    return l1 + kl_weight * post.kl().mean(), l1


@torch.inference_mode()
def measure(vae, images_u8: torch.Tensor, batch: int = 64) -> dict:
    """Held-out PSNR (dB, images in [0, 1], mean over images) and the scale factor 1 / std(posterior mean)."""
    from iclevr.data.course import to_model_range

    psnr, means = [], []
    for i in range(0, len(images_u8), batch):
        x0 = to_model_range(images_u8[i : i + batch].to(next(vae.parameters()).device))
        mu = vae.encode(x0).latent_dist.mean
        rec = vae.decode(mu).sample.clamp(-1, 1)
        mse = ((rec - x0) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)  # (b,) on the [0, 1] scale
        psnr.append(-10 * torch.log10(mse))
        means.append(mu.flatten().cpu())
    return {"psnr_db": float(torch.cat(psnr).mean()), "scale_factor": float(1.0 / torch.cat(means).std())}


def train_autoencoder(
    settings: AutoencoderTrainSettings,
    console=None,
    resume: bool = False,
    overwrite: bool = False,
    clock=time.monotonic,
) -> Path:
    """Train the autoencoder of `settings` into its run folder (module docstring) and return the folder."""
    from rich.console import Console

    from iclevr.data.course import load_kit, load_train_tensors, to_model_range
    from iclevr.data.kits import resolve_data_dir
    from iclevr.device import pick_device
    from iclevr.seeding import mix_seed
    from iclevr.settings import write_settings
    from iclevr.training.lock import run_lock
    from iclevr.training.lr import lr_at, run_progress, warmup_ramp
    from iclevr.training.run_folder import MetricsLog
    from iclevr.training.signals import interrupt_flag, stop_cause
    from iclevr.training.state import load_latest

    console = console or Console(quiet=True)
    if settings.max_steps is None and settings.max_minutes is None:
        raise UserError("the autoencoder needs a budget: --max-steps or --max-minutes")
    run, cfg = run_dir(settings), settings.model
    device = pick_device(settings.device)
    with run_lock(run):
        _prepare(run, resume, overwrite)
        data_dir = resolve_data_dir(settings.data.data_dir, console)
        kit = load_kit(data_dir, settings.data.images_dir, splits=False)
        images_u8, _ = load_train_tensors(kit, cfg.resolution, settings.data.cache)  # (N, 3, R, R) uint8
        held, train_idx = heldout_split(len(images_u8), settings.heldout, settings.seed)
        torch.manual_seed(settings.seed)
        vae = build_autoencoder(cfg).to(device).train()
        opt = torch.optim.AdamW(vae.parameters(), lr=settings.lr, weight_decay=0.0)
        found = load_latest(run / "state") if resume else None
        step, wall0 = (found[0]["step"], found[0]["wall_s"]) if found else (0, 0.0)
        if found:
            vae.load_state_dict(found[0]["model"])
            opt.load_state_dict(found[0]["optimizer"])
            console.print(f"resuming {run} from {found[1].name}")
        write_settings(settings, run)
        n_params = sum(p.numel() for p in vae.parameters())
        console.print(
            f"autoencoder {tuple(cfg.block_out_channels)} f={cfg.factor} ({n_params / 1e6:.2f} M "
            f"parameters), {len(train_idx):,} training / {len(held)} held-out images from {data_dir}, "
            f"batch {settings.batch_size}, {_budget_text(settings)}, on {device}"
        )
        metrics, t0 = MetricsLog(run, step), clock()
        steps_per_epoch = max(1, len(train_idx) // settings.batch_size)
        loss_sum, last = 0.0, None
        total_s = settings.max_minutes * 60 if settings.max_minutes else None
        with interrupt_flag() as stop, _bar(console, settings.max_steps or total_s) as (bar, task):
            while True:
                elapsed = wall0 + clock() - t0
                if (
                    (settings.max_steps and step >= settings.max_steps)
                    or (not settings.max_steps and total_s and elapsed >= total_s)
                    or stop["set"]
                ):
                    break
                progress = run_progress(step, elapsed, total_steps=settings.max_steps, budget_s=total_s)
                for group in opt.param_groups:
                    group["lr"] = settings.lr * lr_at(
                        progress, warmup=warmup_ramp(step, settings.warmup_steps), schedule="cosine"
                    )
                epoch, i = divmod(step, steps_per_epoch)
                order = train_idx[
                    torch.randperm(
                        len(train_idx), generator=torch.Generator().manual_seed(mix_seed(settings.seed, 12, epoch))
                    )
                ]
                idx = order[i * settings.batch_size : (i + 1) * settings.batch_size]
                x0 = to_model_range(images_u8[idx].to(device))  # (B, 3, R, R)
                g = torch.Generator(device).manual_seed(mix_seed(settings.seed, 13, step))
                loss, l1 = vae_loss(vae, x0, settings.kl_weight, g)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                loss_sum += l1.item()
                if not math.isfinite(loss_sum):
                    raise UserError(
                        f"autoencoder loss became non-finite at step {step}; lower --lr "
                        f"(now {settings.lr:g}) and start over with --overwrite"
                    )
                if step % settings.log_every == 0:
                    last = loss_sum / settings.log_every
                    metrics.log(
                        {
                            "step": step,
                            "l1": last,
                            "lr": opt.param_groups[0]["lr"],
                            "wall_s": round(wall0 + clock() - t0, 2),
                        }
                    )
                    loss_sum = 0.0
                if step % settings.checkpoint_every_steps == 0:
                    _save_state(run, vae, opt, step, wall0 + clock() - t0)
                bar.update(
                    task,
                    completed=step if settings.max_steps else min(elapsed, total_s),
                    l1="-" if last is None else f"{last:.4f}",
                )
        metrics.close()
        wall = wall0 + clock() - t0
        _save_state(run, vae, opt, step, wall)
        if stop["set"]:
            raise TrainingStopped(
                f"{stop_cause(stop)} at step {step}; state saved in {run}/state; continue with "
                f"`iclevr autoencoder train --resume {run}`"
            )
        return _finish(run, vae.eval(), settings, images_u8[held], step, wall, data_dir, console)


def _prepare(run: Path, resume: bool, overwrite: bool) -> None:
    """Protect an existing run folder: continue it only with resume, clear it only with overwrite."""
    import shutil

    from iclevr.fileio import check_writable
    from iclevr.training.state import list_states

    if resume and overwrite:
        raise UserError("--resume and --overwrite conflict: continue the run or start it over, not both")
    states = list_states(run / "state")
    if resume and not states:
        raise UserError(f"nothing to resume in {run}: it holds no autoencoder training state")
    if overwrite:
        shutil.rmtree(run / "state", ignore_errors=True)
        for name in (FILE_NAME, "metrics.jsonl", "report.json"):
            (run / name).unlink(missing_ok=True)
    elif (states or (run / FILE_NAME).is_file()) and not resume:
        raise UserError(
            f"{run} already holds an autoencoder run; pass --resume {run} to continue it, or "
            "--overwrite to start it over"
        )
    check_writable(run)


def _save_state(run: Path, vae, opt, step: int, wall_s: float) -> None:
    """One resumable state (atomic; the newest two kept)."""
    from iclevr.training.state import rng_states, save_state

    save_state(
        run / "state",
        {"step": step, "wall_s": wall_s, "model": vae.state_dict(), "optimizer": opt.state_dict(), "rng": rng_states()},
        keep=2,
    )


def _finish(
    run: Path, vae, settings: AutoencoderTrainSettings, held_u8, step: int, wall_s: float, data_dir: Path, console
) -> Path:
    """Measure on the held-out images, write autoencoder.safetensors and report.json; return the run folder."""
    from iclevr.autoencoder import save_autoencoder
    from iclevr.data.synth import is_embedded_kit
    from iclevr.fileio import write_json

    m = measure(vae, held_u8)
    embedded = is_embedded_kit(data_dir)
    info = {
        "data": f"embedded kit {Path(data_dir).name}" if embedded else "course kit",
        "data_name": Path(data_dir).name,
        "embedded": embedded,
        "steps": step,
        "minutes": round(wall_s / 60, 2),
        "heldout": settings.heldout,
        "psnr_db": round(m["psnr_db"], 3),
        "seed": settings.seed,
    }
    save_autoencoder(vae, run / FILE_NAME, settings.model, m["scale_factor"], info)
    write_json(run / "report.json", {**info, "scale_factor": m["scale_factor"]})
    console.print(
        f"[green]done[/]: {step:,} steps in {wall_s / 60:.1f} min; held-out PSNR {m['psnr_db']:.2f} dB, "
        f"scale factor {m['scale_factor']:.4f}; {run / FILE_NAME}"
    )
    return run


def _budget_text(settings: AutoencoderTrainSettings) -> str:
    return f"{settings.max_steps:,} steps" if settings.max_steps else f"{settings.max_minutes:g} min"


def _bar(console, total: float):
    """The progress bar (steps of a step budget, seconds of a time budget) and its task."""
    from contextlib import contextmanager

    from iclevr.progress import progress_bar

    @contextmanager
    def cm():
        with progress_bar(console) as bar:
            yield bar, bar.add_task("autoencoder", total=total, l1="-")

    return cm()
