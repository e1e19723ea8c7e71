"""The seed-style loops against iclevr's, timed for benchmarks/gpu_check.sh: training images/s and peak memory
per precision, and sampling seconds with 1000 DDPM steps against the default sampler.

    python benchmarks/seed_style_loop.py train --data-dir KIT --rows seed:fp16 seed:bf16 ours:fp16 ours:bf16
        [--steps 30] [--warmup 5] [--device auto] [--keep-run DIR] [--tiny] --out train_speed.json
    python benchmarks/seed_style_loop.py sample --checkpoint RUN [--ddpm-steps 1000] [--device auto] --out s.json

train rows (same `seed` preset UNet, batch, data and precision):
  seed  the course's reference solution in a few lines, written here: a plain diffusers UNet2DModel
        (class_embed_type="identity") whose class embedding is nn.Linear(24, 4 x the first width), a torch
        Dataset that opens every PNG with PIL (Resize, ToTensor, Normalize), a shuffling DataLoader, DDPM noise
        (DDPMScheduler.add_noise), MSE on eps, Adam at 1e-5, torch.autocast in the row's precision with a
        GradScaler for fp16, and loss.item() every step (the reference logs every step).
  ours  iclevr's train() itself on the `seed` preset at the row's precision, timed from its own loss log.
  Images/s count the steps after --warmup; peak memory is torch.cuda.max_memory_allocated on a GPU, the
  process's peak RSS on a CPU (monotone: only the first row's is its own). On a CPU autocast is off (iclevr
  trains in fp32 there), so CPU rows only show that the script runs.
sample rows (one trained weights file, 32 conditions shaped like test.json, guidance 2, iclevr's batched
  classifier-free guidance): ddpm at --ddpm-steps (1000, the seed's) and the default sampler (dpmpp-sde 20).
--tiny swaps the `seed` UNet for a very small one (16x16) so the CPU test of gpu_check.sh takes seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]  # result files name paths relative to it (iclevr.fileio.portable)
TINY_MODEL = {
    "sample_size": 16,
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "no": torch.float32}


class SeedNet(nn.Module):
    """The reference solution's noise predictor: UNet2DModel + a linear class embedding added to the time path."""

    def __init__(self, cfg):
        from diffusers import UNet2DModel

        super().__init__()
        self.unet = UNet2DModel(
            sample_size=cfg.sample_size,
            in_channels=3,
            out_channels=3,
            layers_per_block=cfg.layers_per_block,
            block_out_channels=tuple(cfg.block_out_channels),
            down_block_types=tuple(cfg.down_block_types),
            up_block_types=tuple(cfg.up_block_types),
            attention_head_dim=cfg.attention_head_dim,
            norm_num_groups=cfg.norm_num_groups,
            class_embed_type="identity",
        )
        self.label = nn.Linear(24, 4 * cfg.block_out_channels[0])

    def forward(self, x_t, t, y):
        """eps for x_t (B, 3, S, S) at timesteps t (B,) under multi-hot y (B, 24)."""
        return self.unet(x_t, t, class_labels=self.label(y)).sample  # (B, 3, S, S)


class PngDataset(torch.utils.data.Dataset):
    """train.json as the reference reads it: every item opens its PNG with PIL and transforms it."""

    def __init__(self, data_dir: Path, size: int):
        from torchvision import transforms

        from iclevr.data.course import load_kit
        from iclevr.labels import encode

        kit = load_kit(data_dir, splits=False)
        self.items = [(kit.images_dir / name, encode(names)) for name, names in kit.train.items()]
        self.transform = transforms.Compose(
            [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        path, y = self.items[i]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), y


def settings_for(args, precision: str):
    """The `seed` preset (its UNet swapped for a tiny one with --tiny) at this precision, on --data-dir."""
    from iclevr.settings import TrainSettings, resolve

    over = {
        "data.data_dir": str(args.data_dir),
        "train.mixed_precision": precision,
        "train.device": args.device,
        "train.epochs": None,
        "train.max_minutes": None,
        "train.sample_grids": "off",
        "train.checkpoint_every": 0,
    }
    if args.batch_size:
        over["train.batch_size"] = args.batch_size
    if args.tiny:
        over.update({f"model.{k}": v for k, v in TINY_MODEL.items()})
    return resolve(TrainSettings, preset="seed", overrides=over)


def clock(device) -> float:
    """Wall time after the queued GPU work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_mib(device) -> float:
    """Peak GPU memory allocated since the last reset, or this process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_row(settings, args, device) -> dict:
    """`args.steps` timed steps (after `args.warmup`) of the reference-style loop."""
    from diffusers import DDPMScheduler

    B, precision = settings.train.batch_size, settings.train.mixed_precision
    torch.manual_seed(0)
    model = SeedNet(settings.model).to(device).train()
    data = PngDataset(args.data_dir, settings.model.sample_size)
    loader = torch.utils.data.DataLoader(data, batch_size=B, shuffle=True, drop_last=True, num_workers=args.workers)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and precision == "fp16")
    done, began, batches = 0, 0.0, iter(loader)
    while done < args.warmup + args.steps:
        try:
            x0, y = next(batches)
        except StopIteration:  # a small kit: start another epoch
            batches = iter(loader)
            continue
        if done == args.warmup:
            began = clock(device)
        x0, y = x0.to(device), y.to(device)  # (B, 3, S, S) in [-1, 1], (B, 24)
        eps = torch.randn_like(x0)
        t = torch.randint(0, 1000, (len(x0),), device=device)
        with torch.autocast(device.type, dtype=DTYPES[precision], enabled=cuda and precision != "no"):
            loss = nn.functional.mse_loss(model(scheduler.add_noise(x0, eps, t), t, y), eps)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss.item()  # the reference logs every step: one host sync per step
        done += 1
    wall = clock(device) - began
    return {"images_per_s": args.steps * B / wall, "s_per_step": wall / args.steps}


def ours_row(settings, args, device, run: Path) -> dict:
    """iclevr's train() for warmup + steps, timed from its own loss log between the two log points."""
    from rich.console import Console

    from iclevr.fileio import read_jsonl
    from iclevr.training.loop import train

    cfg = settings.train.model_copy(update={"max_steps": args.warmup + args.steps, "log_every": args.warmup})
    train(settings.model_copy(update={"train": cfg, "out": run}), console=Console(quiet=True), overwrite=True)
    logs = {r["step"]: r["wall_s"] for r in read_jsonl(run / "metrics.jsonl")}
    wall = logs[args.warmup + args.steps] - logs[args.warmup]
    return {"images_per_s": args.steps * settings.train.batch_size / wall, "s_per_step": wall / args.steps}


def train_rows(args) -> list[dict]:
    """Every --rows entry (loop:precision), each with images/s, s/step and peak memory."""
    from iclevr.device import pick_device
    from iclevr.model import build_model, count_parameters

    device = pick_device(args.device)
    if args.steps % args.warmup:  # ours is timed between two log points, every `warmup` steps
        args.steps += args.warmup - args.steps % args.warmup
    rows = []
    for entry in args.rows:
        loop, precision = entry.split(":")
        settings = settings_for(args, precision)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        began = time.perf_counter()
        if loop == "seed":
            row, params = seed_row(settings, args, device), count_parameters(SeedNet(settings.model))
        else:
            run = Path(args.keep_run) if args.keep_run else Path(tempfile.mkdtemp(prefix="iclevr-ours-"))
            row, params = ours_row(settings, args, device, run), count_parameters(build_model(settings.model))
        rows.append(
            {
                "loop": loop,
                "precision": precision,
                "autocast": device.type == "cuda" and precision != "no",
                **{k: round(v, 4) for k, v in row.items()},
                "peak_mib": round(peak_mib(device)),
                "batch": settings.train.batch_size,
                "resolution": settings.model.sample_size,
                "params_M": round(params / 1e6, 2),
                "steps": args.steps,
                "warmup": args.warmup,
                "row_seconds": round(time.perf_counter() - began, 1),
                "device": str(device),
                "tiny": args.tiny,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def sample_rows(args) -> list[dict]:
    """Seconds to draw the embedded kit's 32 test conditions with ddpm at --ddpm-steps and with the default
    sampler (dpmpp-sde at its default steps), from the same weights, guidance 2, one batch."""
    from iclevr.data.course import load_conditions
    from iclevr.device import pick_device
    from iclevr.labels import encode_many
    from iclevr.sampling import resolve_steps, sample
    from iclevr.settings import SamplerSettings
    from iclevr.weights import load_weights, resolve_checkpoint

    device = pick_device(args.device)
    model, info = load_weights(resolve_checkpoint(args.checkpoint), device)
    y = encode_many(load_conditions(None, ("test",))["test"])  # (32, 24)
    warm = SamplerSettings(sampler="ddim", steps=2, batch_size=len(y))
    sample(model, y, schedule=info.schedule, sampler=warm, device=device)  # kernel choice outside the timing
    rows = []
    for name, steps in (("ddpm", args.ddpm_steps), (SamplerSettings().sampler, None)):
        chosen = SamplerSettings(sampler=name, steps=steps, guidance_scale=2.0, batch_size=len(y))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        began = clock(device)
        sample(model, y, schedule=info.schedule, sampler=chosen, device=device)
        seconds = clock(device) - began
        rows.append(
            {
                "sampler": name,
                "steps": resolve_steps(chosen, info.schedule),
                "images": len(y),
                "seconds": round(seconds, 2),
                "images_per_s": round(len(y) / seconds, 2),
                "peak_mib": round(peak_mib(device)),
                "resolution": info.model.sample_size,
                "weights": str(info.path),
                "device": str(device),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments of both parts."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    t = sub.add_parser("train", help="Training images/s and peak memory per loop and precision.")
    t.add_argument("--data-dir", type=Path, required=True, help="A course-layout kit (train.json + iclevr/).")
    t.add_argument(
        "--rows",
        nargs="+",
        default=["seed:fp16", "seed:bf16", "ours:fp16", "ours:bf16"],
        help="loop:precision entries, loop = seed or ours, precision = fp16, bf16 or no.",
    )
    t.add_argument("--steps", type=int, default=30, help="Timed steps per row.")
    t.add_argument("--warmup", type=int, default=5, help="Untimed steps first (kernel choice, allocator).")
    t.add_argument("--batch-size", type=int, default=None, help="Default: the seed preset's (32).")
    t.add_argument("--workers", type=int, default=4, help="DataLoader workers of the seed loop.")
    t.add_argument("--keep-run", type=Path, default=None, help="Run folder of the ours rows (kept, for sample).")
    t.add_argument("--tiny", action="store_true", help="A 16x16 toy UNet instead of the seed preset's.")
    s = sub.add_parser("sample", help="Seconds for 32 images: ddpm 1000 steps against the default sampler.")
    s.add_argument("--checkpoint", type=Path, required=True, help="Run folder or .safetensors weights.")
    s.add_argument("--ddpm-steps", type=int, default=1000, help="DDPM steps (the seed's: 1000).")
    for q in (t, s):
        q.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
        q.add_argument("--out", type=Path, required=True, help="JSON file of the rows.")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Run one part and write its rows as JSON."""
    from iclevr.errors import UserError
    from iclevr.fileio import write_result_json

    args = parse_args(argv)
    try:
        rows = train_rows(args) if args.part == "train" else sample_rows(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_result_json(
        args.out, {"part": args.part, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}, base=REPO
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
