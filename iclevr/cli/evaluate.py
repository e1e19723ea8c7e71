"""`iclevr eval` and `iclevr evaluator train|export`: the course metric and the evaluators."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from iclevr.cli.common import command, console
from iclevr.cli.common import (CheckpointOpt, ConfigOpt, DataDirOpt, DeviceOpt, GuidanceOpt, PrintConfigOpt,
                               SamplerOpt, SeedOpt, StepsOpt, print_settings)

evaluator_app = typer.Typer(help="Train the project's own evaluator, or export it in the course format.",
                            no_args_is_help=True)

EvaluatorOpt = Annotated[Optional[Path], typer.Option("--evaluator", help="Evaluator file: the course "
                                                      "checkpoint.pth or our .safetensors.")]


def _seeds(text: Optional[str]) -> Optional[list[int]]:
    """'0,1,2' -> [0, 1, 2] with a clear error."""
    from iclevr.errors import UserError

    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise UserError(f"--seeds needs at least one non-negative integer, got {text!r}")
    return seeds


@command
def eval_cmd(
    checkpoint: CheckpointOpt = None,
    split: Annotated[Optional[str], typer.Option("--split", help="test, new_test or all.")] = None,
    data_dir: DataDirOpt = None,
    evaluator: EvaluatorOpt = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Sampling seeds, e.g. 0,1,2.")] = None,
    sampler: SamplerOpt = None,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default <run>/eval).")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Score the PNGs in this folder "
                                                   "(<dir>/<split>/0.png..) instead of sampling.")] = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Generate each split's conditions, score them with the course evaluator metric, write images and report."""
    from iclevr.evaluation.run import EvalSettings, evaluate
    from iclevr.evaluation.report import print_report
    from iclevr.settings import resolve

    overrides = {"checkpoint": checkpoint, "split": split, "data_dir": data_dir, "evaluator": evaluator,
                 "seeds": _seeds(seeds), "sampler.sampler": sampler, "sampler.steps": steps,
                 "sampler.guidance_scale": guidance_scale, "sampler.device": device, "out": out, "images": images}
    settings = resolve(EvalSettings, config=config, overrides=overrides)
    if print_config:
        return print_settings(settings)
    print_report(console, evaluate(settings, console))


@evaluator_app.command("train")
@command
def evaluator_train_cmd(
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Train on this course-layout folder's "
                                                     "images instead of freshly rendered scenes.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output .safetensors (default: the cached "
                                                "$ICLEVR_HOME/evaluator/own-v1.safetensors).")] = None,
    minutes: Annotated[Optional[float], typer.Option("--minutes", help="Training wall-clock budget.")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps (stops at whichever "
                                                     "of steps and minutes comes first).")] = None,
    pool: Annotated[Optional[int], typer.Option("--pool", help="Rendered training scenes.")] = None,
    heldout: Annotated[Optional[int], typer.Option("--heldout", help="Fresh scenes per held-out set.")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", help="Fine-tune this own evaluator (.safetensors) "
                                                 "instead of starting from random weights.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak AdamW learning rate.")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train the project's own evaluator (resnet18, 24 sigmoid outputs) and report its held-out accuracy."""
    from iclevr.evaluation.report import print_trained
    from iclevr.evaluation.fit import EvaluatorTrainSettings, train_evaluator
    from iclevr.settings import resolve

    overrides = {"data_dir": data_dir, "out": out, "minutes": minutes, "max_steps": max_steps, "pool": pool,
                 "heldout": heldout, "init": init, "lr": lr, "seed": seed, "device": device}
    settings = resolve(EvaluatorTrainSettings, config=config, overrides=overrides)
    if print_config:
        return print_settings(settings)
    path, info = train_evaluator(settings, console)
    print_trained(console, path, info)


@evaluator_app.command("export")
@command
def evaluator_export_cmd(
    out: Annotated[Path, typer.Option("--out", help="Course-format file to write, e.g. checkpoint.pth.")],
    evaluator: EvaluatorOpt = None,
) -> None:
    """Write an evaluator (default: the project's own, cached) as a course checkpoint.pth ({"model": state_dict})."""
    from iclevr.evaluation.evaluator import export_course, load_file, own_default_path
    from iclevr.errors import UserError

    source = evaluator or own_default_path()
    if evaluator is None and not source.is_file():
        raise UserError(f"no own evaluator at {source} yet; train it with `iclevr evaluator train`")
    ev = load_file(source)
    path = export_course(ev, out)
    console.print(f"exported {ev.kind} evaluator {source} -> {path} (course format: "
                  '{"model": state_dict}, loads with torch.load(weights_only=True))')
