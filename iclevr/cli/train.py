"""`iclevr train`: build TrainSettings from preset < config < typed flags and call iclevr.training.loop.train."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from iclevr.cli.common import (
    ConfigOpt,
    DataDirOpt,
    DeviceOpt,
    PresetOpt,
    PrintConfigOpt,
    SeedOpt,
    command,
    console,
    optional_float,
    optional_int,
    print_settings,
    resume_config,
    typed_overrides,
)

Opt = typer.Option


@command
def train_cmd(
    ctx: typer.Context,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
    data_dir: DataDirOpt = None,
    out: Annotated[Optional[Path], Opt(help="Run folder (default checkpoints/<preset>-<schedule>-s<seed>).")] = None,
    resume: Annotated[Optional[Path], Opt(help="Continue the run in this folder from its newest state.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Start over in an existing run folder.")] = False,
    epochs: Annotated[Optional[int], optional_int(help="Epochs to train (none = no epoch budget).")] = None,
    max_steps: Annotated[
        Optional[int], optional_int(help="Optimizer steps to train (wins over --epochs; none = no step budget).")
    ] = None,
    max_minutes: Annotated[
        Optional[float], optional_float(help="Wall-clock budget; saves and stops cleanly (none = no time budget).")
    ] = None,
    batch_size: Annotated[Optional[int], Opt(help="Images per step and process.")] = None,
    lr: Annotated[Optional[float], Opt(help="Peak learning rate.")] = None,
    schedule: Annotated[
        Optional[str], Opt(help="Noise schedule: linear, scaled_linear, sigmoid, squaredcos_cap_v2, cosine.")
    ] = None,
    prediction_type: Annotated[Optional[str], Opt(help="epsilon or v_prediction.")] = None,
    seed: SeedOpt = None,
    mixed_precision: Annotated[Optional[str], Opt(help="no, fp16 or bf16 (fp32 on CPU).")] = None,
    device: DeviceOpt = None,
    compile: Annotated[Optional[bool], Opt("--compile/--no-compile", help="torch.compile the UNet.")] = None,
    sample_every: Annotated[Optional[int], Opt(help="Epochs between sample grids (0 = at the end).")] = None,
    sample_grids: Annotated[
        Optional[str],
        Opt(
            help="Progress grids: fast (the default sampler), run (the "
            "run's own sampler settings) or off (use off for the seed "
            "preset on a CPU: its grid alone takes many minutes there)."
        ),
    ] = None,
    p_uncond: Annotated[Optional[float], Opt(help="Probability of dropping the condition (CFG).")] = None,
    autoencoder: Annotated[
        Optional[str],
        Opt(
            help="Latent presets: the autoencoder file or run folder "
            "(`iclevr autoencoder train`; default: the packaged one)."
        ),
    ] = None,
    init_from: Annotated[
        Optional[str],
        Opt(
            help="Start from these weights (file, run folder or 'packaged') of "
            "the same architecture; the optimizer starts fresh."
        ),
    ] = None,
) -> None:
    """Train the conditional diffusion model; re-run with --resume RUN_DIR to continue a run.

    Ctrl-C, SIGTERM or SIGUSR1 finish the step in flight, save the state and exit with code 3 (resumable:
    --resume RUN_DIR continues it); a second Ctrl-C stops at once (130). Exit code 2: bad input, a full disk or
    a permission problem, or a run folder another process is training (one writer per run folder).
    """
    from iclevr.schedules import check_name
    from iclevr.settings import TrainSettings, resolve
    from iclevr.training.loop import train

    if resume is not None:
        check_resumable(resume, preset, start=out is not None and Path(out) == Path(resume))
    config = resume_config(resume, out, config)
    preset, why = default_preset(preset, config)
    overrides = typed_overrides(
        ctx,
        {
            "data_dir": "data.data_dir",
            "out": "out",
            "resume": "out",
            "epochs": "train.epochs",
            "max_steps": "train.max_steps",
            "max_minutes": "train.max_minutes",
            "batch_size": "train.batch_size",
            "lr": "train.lr",
            "schedule": ("schedule.name", check_name),
            "prediction_type": "schedule.prediction_type",
            "seed": "train.seed",
            "mixed_precision": "train.mixed_precision",
            "device": "train.device",
            "compile": "train.compile",
            "sample_every": "train.sample_every",
            "sample_grids": "train.sample_grids",
            "p_uncond": "train.p_uncond",
            "autoencoder": "autoencoder",
            "init_from": "init_from",
        },
    )
    settings = resolve(TrainSettings, preset=preset, config=config, overrides=overrides)
    if print_config:
        return print_settings(settings)
    if os.environ.get("RANK", "0") == "0":  # once under `accelerate launch`
        console.print(f"[bold]iclevr train[/]: preset [cyan]{settings.preset}[/] ({why})")
    train(settings, console=console, resume=resume is not None, overwrite=overwrite)


def default_preset(preset: str | None, config: Path | None) -> tuple[str | None, str]:
    """(preset, why): an explicit --preset, the config file's, else `seed` with a CUDA GPU, else the CPU preset."""
    from iclevr.device import has_gpu
    from iclevr.settings import read_config

    if preset:
        return preset, "chosen with --preset"
    if config and read_config(config).get("preset"):
        return None, f"from {config}"
    if has_gpu():
        return "seed", "no --preset given and a CUDA GPU is present: the reference configuration"
    from iclevr.settings import CPU_PRESET

    return CPU_PRESET, "no --preset given and no CUDA GPU found: the CPU preset; --preset seed for the reference model"


def check_resumable(run: Path, preset: str | None, start: bool = False) -> None:
    """--resume must name a run folder (settings.json or state/) unless `start` (--out names the same folder:
    start it when it is not there yet, as a requeued batch job does), and a --preset given with it must be the
    run's."""
    import json

    from iclevr.errors import UserError

    if start and not (run / "settings.json").is_file():
        return
    if not run.is_dir():
        raise UserError(
            f"--resume {run}: {'no such folder' if not run.exists() else 'not a folder'}; name the "
            "run folder to continue, or start a new run with --out"
        )
    if not (run / "settings.json").is_file() and not (run / "state").is_dir():
        raise UserError(
            f"--resume {run} is not a run folder (no settings.json, no state/); name the run folder "
            "to continue, or start a new run with --out"
        )
    try:
        before = json.loads((run / "settings.json").read_text()).get("preset")
    except (OSError, ValueError, AttributeError):
        before = None  # a damaged settings.json is reported where it is read
    if preset and before and preset != before:
        raise UserError(
            f"--resume {run} was trained with preset {before}, not {preset}; a run keeps its preset: "
            "leave out --preset, or start a new run with --out"
        )
