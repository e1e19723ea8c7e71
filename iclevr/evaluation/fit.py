"""Training the project's own evaluator for the embedded world (`iclevr evaluator train`), and loading the
chosen evaluator with that training as the fallback on first use (`load_evaluator`).

Data: a fixed pool of freshly rendered scenes with 1 to 5 objects (iclevr.data.world.scene.render_examples),
kept in memory as uint8 4:3 frames (a share of them drawn at half size and upsampled back, as a 32x32
generator draws them), or the training images of a course-layout folder (`data_dir`); `init` fine-tunes an
existing evaluator instead of starting from random weights.
Preprocessing follows the course: the frame is squashed to 64x64; for half of every batch it is first
squashed to 32x32 and bilinearly upsampled to 64x64 (the course evaluator was trained that way).
Augmentation never changes which objects are present: horizontal flip, a shift of a few pixels,
brightness/contrast scaled equally on all channels (hues kept), a little Gaussian noise.
Loss: multi-label BCE on the pre-sigmoid outputs; AdamW, linear warm-up over the first steps times a cosine
decay over the budget's progress (steps, or wall-clock minutes: whichever is further along). Held-out scenes
(other seeds) are scored with the course metric.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from pydantic import Field, model_validator

from iclevr.errors import UserError
from iclevr.settings import Section

CHUNK = 250  # scenes per render job; a chunk's seed depends on its index only, never on the worker count
SMALL_CHUNKS = 5000  # chunk-seed offset of the small-rendered part of a pool (pools hold <= 10**6 scenes)
HELDOUT_SEED = 10**5  # held-out sets use pool seeds from here on (chunk seeds >= 10**9, above any training one)


class EvaluatorTrainSettings(Section):
    """Settings of `iclevr evaluator train` (and of the first-use training of the default evaluator)."""

    out: Path | None = Field(
        None,
        description="Output .safetensors file; empty = the cached default $ICLEVR_HOME/evaluator/own-v1.safetensors.",
    )
    data_dir: Path | None = Field(
        None,
        description="Train on the images of this course-layout folder instead "
        "of freshly rendered scenes (5% of its scenes are held out).",
    )
    pool: int = Field(
        16000, gt=0, le=10**6, description="Rendered training scenes kept in memory (~9 KB each at 64x48)."
    )
    small_render_fraction: float = Field(
        0.35,
        ge=0,
        le=1,
        description="Fraction of the pool rendered at half "
        "the render size and upsampled back (scenes drawn small, as a 32x32 "
        "generator's are).",
    )
    init: Path | None = Field(
        None, description="Start from this own evaluator (.safetensors) instead of random weights, i.e. fine-tune it."
    )
    min_objects: int = Field(1, ge=1, le=10, description="Fewest objects per training scene.")
    max_objects: int = Field(5, ge=1, le=10, description="Most objects per training scene.")
    render_size: tuple[int, int] = Field((64, 48), description="Training render size (W, H), 4:3.")
    heldout: int = Field(1000, ge=0, description="Fresh held-out scenes per held-out set (0 = skip).")
    low_res_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Fraction of each batch squashed to 32x32 and "
        "upsampled to 64x64 (like the course evaluator's training images).",
    )
    minutes: float | None = Field(
        10.0,
        gt=0,
        description="Wall-clock training budget in minutes (after "
        "rendering); the LR schedule follows the elapsed fraction.",
    )
    max_steps: int | None = Field(
        None, gt=0, description="Optimizer steps; the run stops at whichever of steps and minutes comes first."
    )
    batch_size: int = Field(128, gt=0, description="Images per optimizer step.")
    lr: float = Field(2e-3, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(100, ge=0, description="Linear LR warm-up steps.")
    seed: int = Field(0, ge=0, lt=10**5, description="Seed of the rendered pool, weights and batches.")
    threads: int = Field(2, gt=0, description="CPU threads for torch (the machine may be shared).")
    workers: int = Field(2, gt=0, description="Processes rendering the pool.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")

    @model_validator(mode="after")
    def _check(self):
        if self.min_objects > self.max_objects:
            raise ValueError("min_objects must not exceed max_objects")
        if self.minutes is None and self.max_steps is None:
            raise ValueError("set minutes or max_steps (the training budget)")
        return self


def _render_chunk(job: tuple):
    from iclevr.data.world.scene import render_examples

    n, seed, lo, hi, size = job
    return render_examples(n, seed, lo, hi, size=size)


def render_pool(
    n: int,
    seed: int,
    min_objects: int,
    max_objects: int,
    size: tuple[int, int],
    workers: int = 1,
    progress=None,
    chunk_offset: int = 0,
):
    """Render n scenes in chunks (in `workers` processes): (uint8 (n, 3, H, W), multi-hot (n, 24))."""
    import numpy as np
    import torch

    from iclevr import labels as L

    jobs = [
        (min(CHUNK, n - i), seed * 10**4 + chunk_offset + i // CHUNK, min_objects, max_objects, tuple(size))
        for i in range(0, n, CHUNK)
    ]
    frames, names = [], []
    if workers <= 1 or len(jobs) == 1:
        results = map(_render_chunk, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(
            min(workers, len(jobs)), mp_context=get_context("fork" if os.name == "posix" else "spawn")
        )
        results = pool.map(_render_chunk, jobs)
    try:
        for images, labels in results:
            frames.append(images)
            names.extend(labels)
            if progress is not None:
                progress(len(names), n)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    x = torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2).contiguous()  # (n, 3, H, W)
    return x, L.encode_many(names)


def training_pool(settings: EvaluatorTrainSettings, progress=None):
    """The rendered pool, a fraction drawn at half size and upsampled: (uint8 (n, 3, H, W), (n, 24))."""
    # the half-size share makes a 32x32 generator's small, soft objects part of the training distribution
    import torch
    import torch.nn.functional as F

    n_small = round(settings.pool * settings.small_render_fraction)
    n_full = settings.pool - n_small
    w, h = settings.render_size
    parts = []
    if n_full:
        parts.append(
            render_pool(
                n_full,
                settings.seed,
                settings.min_objects,
                settings.max_objects,
                (w, h),
                settings.workers,
                progress=progress,
            )
        )
    if n_small:
        small, y = render_pool(
            n_small,
            settings.seed,
            settings.min_objects,
            settings.max_objects,
            (max(1, w // 2), max(1, h // 2)),
            settings.workers,
            chunk_offset=SMALL_CHUNKS,
            progress=None if progress is None else lambda k, total: progress(n_full + k, settings.pool),
        )
        up = F.interpolate(small.float(), size=(h, w), mode="bilinear", align_corners=False)
        parts.append((up.round().clamp(0, 255).to(torch.uint8), y))  # (n_small, 3, H, W)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def preprocess(frames_u8, low_res):
    """uint8 frames (B, 3, H, W) -> float (B, 3, 64, 64) in [-1, 1]; rows where low_res is True go via 32x32."""
    import torch.nn.functional as F

    x = frames_u8.float().div(127.5).sub(1.0)
    full = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    if low_res.any():
        small = F.interpolate(x[low_res], size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        full[low_res] = F.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False)
    return full  # (B, 3, 64, 64)


def augment(x, gen):
    """Label-preserving augmentation of (B, 3, 64, 64): flip, shift <= 3 px, brightness/contrast, noise."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-3, 4, (2,), generator=gen))
    x = torch.roll(F.pad(x, (3, 3, 3, 3), mode="replicate"), shifts=(dy, dx), dims=(2, 3))[:, :, 3:-3, 3:-3]
    gain = 1 + 0.1 * (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1)  # same on all channels: hues kept
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * gain + mean + 0.06 * (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1)
    x = x + 0.03 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x.clamp(-1, 1)


def heldout_sets(settings: EvaluatorTrainSettings, progress=None) -> dict:
    """Fresh scenes the evaluator never saw: {name: (x (N, 3, 64, 64) in [-1, 1], y (N, 24))}."""
    import torch

    n = settings.heldout
    sets = {}
    if n == 0:
        return sets
    specs = {  # name: (seed offset, min, max, render size, via 32x32)
        "1-3 objects, 64x48 -> 64x64": (1, 1, 3, (64, 48), False),
        "1-3 objects, rendered 32x24 -> 32x32 -> 64x64": (2, 1, 3, (32, 24), True),
        "1-3 objects, 128x96 -> 64x64 (kit-like)": (3, 1, 3, (128, 96), False),
        "1-5 objects, 64x48 -> 64x64": (4, 1, 5, (64, 48), False),
    }
    for name, (off, lo, hi, size, low) in specs.items():
        frames, y = render_pool(n, HELDOUT_SEED + off, lo, hi, size, settings.workers)
        sets[name] = (preprocess(frames, torch.full((n,), low)), y)
        if progress is not None:
            progress(name)
    return sets


def score_sets(net, sets: dict) -> dict:
    """Course-metric accuracy of `net` on each held-out set: {name: accuracy}."""
    from iclevr.evaluation.evaluator import Evaluator
    from iclevr.evaluation.metric import accuracy

    ev = Evaluator(net, None, "own")
    out = {}
    for name, (x, y) in sets.items():
        hits, total = accuracy(ev.scores(x), y)
        out[name] = round(hits / total, 4)
    return out


def kit_data(settings: EvaluatorTrainSettings):
    """Training frames, labels and held-out sets from a course-layout folder (its last 5% held out)."""
    import torch

    from iclevr.data.course import load_kit, load_train_tensors

    frames, y = load_train_tensors(load_kit(settings.data_dir, splits=False), 64)  # (N, 3, 64, 64)
    n_hold = min(max(1, len(frames) // 20), settings.heldout) if settings.heldout else 0
    if len(frames) - n_hold < 1:
        raise UserError(f"{settings.data_dir} has too few training images ({len(frames)}) to train an evaluator")
    keep = len(frames) - n_hold
    hold = {}
    if n_hold:
        hold = {
            "held-out kit images -> 64x64": (preprocess(frames[keep:], torch.zeros(n_hold, dtype=bool)), y[keep:]),
            "held-out kit images -> 32x32 -> 64x64": (
                preprocess(frames[keep:], torch.ones(n_hold, dtype=bool)),
                y[keep:],
            ),
        }
    return frames[:keep], y[:keep], hold


def fit(settings: EvaluatorTrainSettings, frames, y, device, progress=None) -> tuple[object, dict]:
    """Train an evaluator (fresh, or from settings.init) on uint8 frames (N, 3, H, W), labels (N, 24): (net, stats)."""
    import math

    import torch
    import torch.nn.functional as F

    from iclevr.evaluation.evaluator import build_evaluator, forward_logits, load_own
    from iclevr.training.lr import lr_at, warmup_ramp

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    net = build_evaluator()
    if settings.init is not None:
        net.load_state_dict(load_own(settings.init).net.state_dict())
    net = net.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    budget_s = settings.minutes * 60 if settings.minutes else math.inf
    max_steps = settings.max_steps or math.inf
    n, b = len(frames), min(settings.batch_size, len(frames))
    perm, pos, step, last_loss = torch.randperm(n, generator=gen), 0, 0, float("nan")
    t0 = time.time()
    while (frac := max(step / max_steps, (time.time() - t0) / budget_s)) < 1:
        lr = settings.lr * lr_at(frac, warmup=warmup_ramp(step, settings.warmup_steps), schedule="cosine")
        for group in opt.param_groups:
            group["lr"] = lr
        if pos + b > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx, pos = perm[pos : pos + b], pos + b
        low = torch.rand(b, generator=gen) < settings.low_res_fraction
        x = augment(preprocess(frames[idx], low), gen).to(device, memory_format=torch.channels_last)
        loss = F.binary_cross_entropy_with_logits(forward_logits(net, x), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 10 == 0 or step == 1:
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise UserError(f"evaluator training diverged (loss {last_loss} at step {step}); lower --lr")
            if progress is not None:
                progress(frac, step, last_loss)
    return net.eval(), {
        "steps": step,
        "images_seen": step * b,
        "train_s": round(time.time() - t0, 1),
        "final_loss": round(last_loss, 5),
    }


def train_evaluator(settings: EvaluatorTrainSettings, console=None) -> tuple[Path, dict]:
    """Render (or load) the data, train, score the held-out sets with the course metric, save; -> (path, info)."""
    import torch
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from iclevr.device import pick_device
    from iclevr.evaluation.evaluator import own_default_path, save_own
    from iclevr.fileio import check_writable
    from iclevr.progress import progress_bar

    out = Path(settings.out) if settings.out else own_default_path()
    check_writable(out.parent)
    torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    t0 = time.time()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with progress_bar(console, enabled=console is not None, columns=columns) as bar:
        if settings.data_dir is not None:
            frames, y, hold = kit_data(settings)
            source = str(settings.data_dir)
        else:
            task = bar.add_task(f"rendering {settings.pool:,} training scenes", total=settings.pool)
            frames, y = training_pool(settings, progress=lambda k, total: bar.update(task, completed=k))
            task = bar.add_task("rendering held-out scenes", total=4)
            hold = heldout_sets(settings, progress=lambda name: bar.advance(task))
            source = "rendered"
        render_s = time.time() - t0
        task = bar.add_task("training", total=1.0)
        net, stats = fit(
            settings,
            frames,
            y,
            device,
            progress=lambda frac, step, loss: bar.update(
                task, completed=frac, description=f"training: step {step}, loss {loss:.4f}"
            ),
        )
        bar.update(task, completed=1.0)
    heldout = score_sets(net, hold)
    info = {
        "heldout": heldout,
        "heldout_scenes": settings.heldout,
        "metric": "course top-k micro accuracy",
        "train": {
            "source": source,
            "pool": len(frames),
            "objects": [settings.min_objects, settings.max_objects],
            "render_size": list(settings.render_size),
            "low_res_fraction": settings.low_res_fraction,
            "small_render_fraction": settings.small_render_fraction,
            "init": str(settings.init) if settings.init else None,
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            "seed": settings.seed,
            "threads": settings.threads,
            "device": str(device),
            "prepare_s": round(render_s, 1),
            **stats,
        },
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_own(net, out, info)
    return out, info


def load_evaluator(
    path: Path | None = None,
    data_dir: Path | None = None,
    device="cpu",
    console=None,
    own: EvaluatorTrainSettings | None = None,
):
    """The evaluator choose_evaluator_file names, loaded; the own one trained first when there is none yet."""
    from iclevr.evaluation.evaluator import (
        choose_evaluator_file,
        load_file,
        load_own,
        own_default_path,
        packaged_evaluator_path,
    )

    chosen = choose_evaluator_file(path, data_dir)
    if path is None and chosen == own_default_path():
        try:
            return load_own(chosen, device)
        except UserError as e:  # a damaged cache is rebuilt, never trusted
            if console is not None:
                console.print(f"[yellow]The cached evaluator is unusable ({e}); removed.[/]")
            chosen.unlink(missing_ok=True)
            chosen = choose_evaluator_file(None, data_dir)
    if chosen is None:
        return _train_on_first_use(device, console, own)
    if console is not None and chosen == packaged_evaluator_path():
        console.print(
            f"[dim]evaluator: the project's packaged own evaluator ({chosen.name}); "
            "`iclevr evaluator train` makes a new one[/]"
        )
    return load_file(chosen, device)


def _train_on_first_use(device, console, settings: EvaluatorTrainSettings | None):
    """Train the own evaluator into its cache file (with a notice), then load it."""
    from iclevr.evaluation.evaluator import load_own, own_default_path

    path = own_default_path()
    settings = (settings or EvaluatorTrainSettings()).model_copy(update={"out": path, "data_dir": None})
    if console is not None:
        budget = f"{settings.minutes:g} minutes" if settings.minutes else f"{settings.max_steps} steps"
        console.print(
            f"[bold]No course evaluator (checkpoint.pth) found:[/] training the project's own "
            f"evaluator once on {settings.pool:,} rendered scenes (about {budget} plus rendering), "
            f"cached at {path}"
        )
    train_evaluator(settings, console)
    return load_own(path, device)
