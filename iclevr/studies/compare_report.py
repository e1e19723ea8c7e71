"""Rich tables of the schedule study (its report.html: evaluation/html.py `render_comparison`).

val is the choosing split (the best schedule is the one with the highest val mean); test and new_test come
after it, reported only.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from iclevr.labels import SPLIT_ROLE, SPLITS, VAL_SPLIT, ordered_splits


def print_report(console, report: dict, out: Path) -> None:
    """Print the schedule table (alpha_bar, SNR range) and, after training, the accuracy table."""
    rows = report["table"]
    ts = list(rows[0]["alpha_bar"]) if rows else []
    table = Table(title="noise schedules: alpha_bar(t) and SNR range")
    table.add_column("schedule", no_wrap=True)
    for t in ts:
        table.add_column(f"t={t}", justify="right")
    table.add_column("log10 SNR", justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["name"], *[f"{r['alpha_bar'][t]:.4g}" for t in ts], f"{r['log10_snr_min']:.1f}…{r['log10_snr_max']:.1f}"
        )
    console.print(table)
    if "runs" in report:
        console.print(_accuracy_table(report))
        best = report.get("best")
        console.print(
            (f"best on {VAL_SPLIT}: [bold]{best}[/]" if best else f"{VAL_SPLIT} chooses")
            + f" ({' and '.join(SPLITS)} are reported, never tuned on)"
        )
        console.print(f"report: {out / 'report.json'}  figures: {out / 'schedules.png'}, {out / 'accuracy.png'}")
    else:
        console.print(f"figure: {out / 'schedules.png'}")


def _accuracy_table(report: dict) -> Table:
    """Accuracy (mean±std) per schedule, val first; the best schedule's row in bold. Fits 80 columns."""
    runs = report["runs"]
    splits = ordered_splits(runs[0]["splits"]) if runs else [VAL_SPLIT, *SPLITS]
    acc = Table(title="accuracy by schedule (course metric, mean±std over seeds)")
    acc.add_column("schedule", no_wrap=True)
    for split in splits:
        acc.add_column(f"{split}\n{SPLIT_ROLE.get(split, '')}".strip(), justify="right", no_wrap=True)
    acc.add_column("final\nloss", justify="right", no_wrap=True)
    acc.add_column("train\nmin", justify="right", no_wrap=True)
    for r in runs:
        s = r["splits"]
        loss = f"{r['final_loss']:.4f}" if r.get("final_loss") is not None else "-"
        acc.add_row(
            r["name"],
            *[f"{s[x]['mean']:.3f}±{s[x]['std']:.3f}" if x in s else "-" for x in splits],
            loss,
            f"{r['train_wall_s'] / 60:.1f}",
            style="bold" if r["name"] == report.get("best") else None,
        )
    return acc
