"""Rich rendering of a data-folder summary (used by `iclevr data check`)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from iclevr.data.course import CourseKit


def print_check_report(
    console, kit: CourseKit, summary: dict, missing: list[str], corrupt: list[str], course_evaluator: Path | None = None
) -> bool:
    """Print the summary tables and problems (`course_evaluator`: the kit's own evaluator file, which
    `iclevr eval --data-dir` would use, or None); return True when the folder is usable."""
    console.print(f"[bold]data folder[/] {kit.data_dir}  [dim](images: {kit.images_dir})[/]")
    head = Table(title="training set", show_header=True)
    head.add_column("objects per image")
    head.add_column("images", justify="right")
    for k, n in summary["objects_per_image"].items():
        head.add_row(str(k), str(n))
    head.add_row("[bold]total[/]", f"[bold]{summary['images']}[/]")
    console.print(head)
    classes = Table(title="per-class counts", show_header=True)
    for _ in range(3):
        classes.add_column("class")
        classes.add_column("count", justify="right")
    items = list(summary["per_class"].items())
    for r in range(8):
        row = []
        for c in range(3):
            name, n = items[c * 8 + r]
            row += [name, str(n)]
        classes.add_row(*row)
    console.print(classes)
    for split, s in summary["splits"].items():
        console.print(f"{split}.json: {s['conditions']} conditions, {s['objects']} objects")
    if summary["extra_pngs"]:
        console.print(
            f"[dim]{summary['extra_pngs']} PNGs in the images folder are not named in train.json (ignored)[/]"
        )
    console.print(
        f"evaluator: {course_evaluator}"
        if course_evaluator
        else "evaluator: no checkpoint.pth (the project evaluator is used)"
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} images missing (first: {', '.join(missing[:5])})")
    if corrupt:
        problems.append(f"{len(corrupt)} images corrupt (first: {', '.join(corrupt[:5])})")
    for p in problems:
        console.print(f"[bold red]problem:[/] {p}")
    if not problems:
        console.print("[bold green]ok:[/] the folder is usable for training and evaluation")
    return not problems
