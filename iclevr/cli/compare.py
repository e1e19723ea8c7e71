"""`iclevr compare-schedules`: the noise-schedule study as one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from iclevr.cli.common import (
    ConfigOpt,
    DataDirOpt,
    GuidanceOpt,
    PresetOpt,
    PrintConfigOpt,
    SamplerOpt,
    StepsOpt,
    command,
    console,
    optional_int,
    parse_int_list,
    print_settings,
    typed_overrides,
)


@command
def compare_schedules(
    ctx: typer.Context,
    schedules: Annotated[Optional[str], typer.Option(help="Comma-separated schedules.")] = None,
    preset: PresetOpt = None,
    epochs: Annotated[Optional[int], optional_int(help="Training epochs per run.")] = None,
    max_steps: Annotated[Optional[int], optional_int(help="Optimizer steps per run.")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Training seeds, e.g. 0,1.")] = None,
    eval_seeds: Annotated[Optional[str], typer.Option(help="Sampling seeds of the evaluation, e.g. 0,1,2.")] = None,
    data_dir: DataDirOpt = None,
    evaluator: Annotated[Optional[Path], typer.Option(help="Evaluator file (default as in `iclevr eval`).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Study folder.")] = None,
    sampler: SamplerOpt = None,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    train_config: Annotated[Optional[Path], typer.Option(help="Training settings file for every run.")] = None,
    plot_only: Annotated[
        bool, typer.Option("--plot-only/--no-plot-only", help="Only the schedules figure and table.")
    ] = False,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train one model per noise schedule (all else identical); val picks the best, test and new_test are reported."""
    from iclevr.settings import resolve
    from iclevr.studies.compare import CompareSettings, check_names, run_study
    from iclevr.studies.compare_report import print_report

    overrides = typed_overrides(
        ctx,
        {
            "schedules": ("schedules", check_names),
            "preset": "preset",
            "epochs": "epochs",
            "max_steps": "max_steps",
            "seeds": ("seeds", lambda text: parse_int_list(text, "--seeds")),
            "eval_seeds": ("eval_seeds", lambda text: parse_int_list(text, "--eval-seeds")),
            "data_dir": "data.data_dir",
            "evaluator": "evaluator",
            "out": "out",
            "sampler": "sampler.sampler",
            "steps": "sampler.steps",
            "guidance_scale": "sampler.guidance_scale",
            "train_config": "train_config",
            "plot_only": "plot_only",
        },
    )
    settings = resolve(CompareSettings, config=config, overrides=overrides)
    if print_config:
        return print_settings(settings)
    report = run_study(settings, console)
    print_report(console, report, settings.out)
