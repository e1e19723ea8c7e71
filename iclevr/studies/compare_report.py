"""Rich tables of the schedule study."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table


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
        table.add_row(r["name"], *[f"{r['alpha_bar'][t]:.4g}" for t in ts],
                      f"{r['log10_snr_min']:.1f}…{r['log10_snr_max']:.1f}")
    console.print(table)
    if "runs" in report:
        acc = Table(title="accuracy by schedule (course metric, mean ± std over seeds)")
        for col in ("schedule", "test", "new_test", "final loss", "train time"):
            acc.add_column(col, justify="left" if col == "schedule" else "right", no_wrap=True)
        for r in report["runs"]:
            s = r["splits"]
            loss = f"{r['final_loss']:.4f}" if r.get("final_loss") is not None else "-"
            acc.add_row(r["name"], f"{s['test']['mean']:.3f} ± {s['test']['std']:.3f}",
                        f"{s['new_test']['mean']:.3f} ± {s['new_test']['std']:.3f}", loss,
                        f"{r['train_wall_s'] / 60:.1f} min")
        console.print(acc)
        console.print(f"report: {out / 'report.json'}  figures: {out / 'schedules.png'}, {out / 'accuracy.png'}")
    else:
        console.print(f"figure: {out / 'schedules.png'}")
