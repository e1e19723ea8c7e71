"""`iclevr eval` and `iclevr evaluator train|export`: the course metric and the evaluators."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from iclevr.cli.common import (
    CheckpointOpt,
    ConfigOpt,
    DataDirOpt,
    DeviceOpt,
    GuidanceOpt,
    PrintConfigOpt,
    SamplerOpt,
    SeedOpt,
    StepsOpt,
    command,
    console,
    optional_float,
    optional_int,
    parse_int_list,
    print_settings,
    typed_overrides,
)

evaluator_app = typer.Typer(
    help="Train the project's own evaluator, or export it in the course format.", no_args_is_help=True
)

EvaluatorOpt = Annotated[
    Optional[Path], typer.Option("--evaluator", help="Evaluator file: the course checkpoint.pth or our .safetensors.")
]


@command
def eval_cmd(
    ctx: typer.Context,
    checkpoint: CheckpointOpt = None,
    split: Annotated[
        Optional[str],
        typer.Option("--split", help="test, new_test, val (tune on this one) or all (test and new_test)."),
    ] = None,
    data_dir: DataDirOpt = None,
    evaluator: EvaluatorOpt = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Sampling seeds, e.g. 0,1,2.")] = None,
    sampler: SamplerOpt = None,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default <run>/eval).")] = None,
    images: Annotated[
        Optional[Path],
        typer.Option("--images", help="Score the PNGs in this folder (<dir>/<split>/0.png..) instead of sampling."),
    ] = None,
    annotate_all_seeds: Annotated[
        bool,
        typer.Option(
            "--annotate-all-seeds/--no-annotate-all-seeds",
            help="An annotated grid for every sampling seed, not only the first.",
        ),
    ] = False,
    fidelity: Annotated[
        Optional[bool],
        typer.Option(
            "--kid/--no-kid",
            help="KID and FD against real images "
            "of the same conditions (default: when every split has "
            "at least --kid-subset-size images).",
        ),
    ] = None,
    kid_subset_size: Annotated[
        Optional[int], typer.Option("--kid-subset-size", help="Images per KID subset (default 50).")
    ] = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Generate each split's conditions, score them with the course evaluator metric and, beside it, their
    fidelity (KID, FD) against real images; write images, annotated grids, report.json and report.html."""
    from iclevr.evaluation.report import print_report
    from iclevr.evaluation.run import EvalSettings, evaluate
    from iclevr.settings import resolve

    overrides = typed_overrides(
        ctx,
        {
            "checkpoint": "checkpoint",
            "split": "split",
            "data_dir": "data_dir",
            "evaluator": "evaluator",
            "seeds": ("seeds", lambda text: parse_int_list(text, "--seeds")),
            "sampler": "sampler.sampler",
            "steps": "sampler.steps",
            "guidance_scale": "sampler.guidance_scale",
            "device": "sampler.device",
            "out": "out",
            "images": "images",
            "annotate_all_seeds": "annotate_all_seeds",
            "fidelity": "fidelity",
            "kid_subset_size": "kid_subset_size",
        },
    )
    settings = resolve(EvalSettings, config=config, overrides=overrides)
    if print_config:
        return print_settings(settings)
    print_report(console, evaluate(settings, console))


@evaluator_app.command("train")
@command
def evaluator_train_cmd(
    ctx: typer.Context,
    data_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--data-dir", help="Train on this course-layout folder's images instead of freshly rendered scenes."
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out", help="Output .safetensors (default: the cached $ICLEVR_HOME/evaluator/own-v1.safetensors)."
        ),
    ] = None,
    minutes: Annotated[
        Optional[float],
        optional_float("--minutes", help="Training wall-clock budget (none = no time limit; then give --steps)."),
    ] = None,
    max_steps: Annotated[
        Optional[int],
        optional_int("--steps", help="Optimizer steps (stops at whichever of steps and minutes comes first)."),
    ] = None,
    pool: Annotated[Optional[int], typer.Option("--pool", help="Rendered training scenes.")] = None,
    heldout: Annotated[Optional[int], typer.Option("--heldout", help="Fresh scenes per held-out set.")] = None,
    init: Annotated[
        Optional[Path],
        typer.Option(
            "--init", help="Fine-tune this own evaluator (.safetensors) instead of starting from random weights."
        ),
    ] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak AdamW learning rate.")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train the project's own evaluator (resnet18, 24 sigmoid outputs) and report its held-out accuracy."""
    from iclevr.evaluation.fit import EvaluatorTrainSettings, train_evaluator
    from iclevr.evaluation.report import print_trained
    from iclevr.settings import resolve

    names = ("data_dir", "out", "minutes", "max_steps", "pool", "heldout", "init", "lr", "seed", "device")
    overrides = typed_overrides(ctx, {name: name for name in names})
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
    overwrite: Annotated[
        bool, typer.Option("--overwrite/--no-overwrite", help="Replace an existing --out file.")
    ] = False,
) -> None:
    """Write an evaluator (default: the one `iclevr eval` would use — the cached own, else the packaged one) as a
    course checkpoint.pth ({"model": state_dict})."""
    from iclevr.errors import UserError
    from iclevr.evaluation.evaluator import choose_evaluator_file, export_course, load_file, own_default_path

    source = choose_evaluator_file(evaluator, None)
    if source is None:
        raise UserError(f"no own evaluator at {own_default_path()} yet; train it with `iclevr evaluator train`")
    ev = load_file(source)
    path = export_course(ev, out, overwrite=overwrite)
    console.print(
        f"exported {ev.kind} evaluator {source} -> {path} (course format: "
        '{"model": state_dict}, loads with torch.load(weights_only=True))'
    )
