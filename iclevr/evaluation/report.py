"""Terminal output of the evaluation room: `iclevr eval`'s Rich tables, and the held-out table of a freshly
trained evaluator (`iclevr evaluator train`); the modules that compute these only return data."""

from __future__ import annotations

from pathlib import Path


def _evaluator_line(ev: dict) -> str:
    held = ev.get("heldout") or {}
    acc = f" (held-out accuracy {', '.join(f'{v:.3f}' for v in held.values())})" if held else ""
    return f"evaluator: {ev['kind']} {ev.get('path') or ''}{acc}"


def print_report(console, report: dict) -> None:
    """Per split: accuracy per seed, mean ± std, hits/total; then the objects most often missed and binding errors."""
    from rich.table import Table

    for split, r in report["splits"].items():
        table = Table(title=f"{split}: course metric (top-k micro accuracy over {r['objects']} objects)")
        table.add_column("seed")
        table.add_column("accuracy", justify="right")
        table.add_column("hits / total", justify="right")
        for run in r["runs"]:
            table.add_row(str(run["seed"]), f"{run['accuracy']:.4f}", f"{run['hits']} / {run['total']}")
        table.add_row(
            "[bold]mean ± std[/]",
            f"[bold]{r['mean']:.4f} ± {r['std']:.4f}[/]",
            f"{r['hits']} / {r['total']}",
            end_section=True,
        )
        console.print(table)
        missed = ", ".join(f"{m['label']} ({m['missed']}/{m['requested']})" for m in r["most_missed"]) or "none"
        console.print(f"  most often missed: {missed}")
        b, w = r["binding"], r["wrong_predictions"]
        console.print(
            f"  wrong predictions: {w['total']} — binding (a requested colour on another requested "
            f"object's shape) {w['binding']}, right colour {w['colour']}, right shape {w['shape']}, "
            f"other {w['other']}; images with a binding error: {b['images']}/{b['images_total']}, "
            f"full colour/shape swaps: {b['full_swaps']}"
        )
        if (f := r.get("fidelity")) is not None:
            console.print("  " + fidelity_line(f))
    console.print(_evaluator_line(report["evaluator"]))
    held = report["evaluator"].get("heldout") or {}
    if held and min(held.values()) < 0.95:
        console.print(
            f"[yellow]warning: this evaluator finds only {min(held.values()):.0%} of the objects in fresh "
            "renders, so these accuracies are unreliable; retrain it longer (`iclevr evaluator train "
            "--minutes 60` replaces the cached one; a GPU is much faster)[/]"
        )
    out = Path(report["out"])
    console.print(
        f"report: {out / 'report.html'} (and report.json)  grids: "
        + ", ".join(str(out / f"{s}_grid.png") for s in report["splits"])
        + "  annotated: "
        + ", ".join(str(out / f"{s}_annotated.png") for s in report["splits"])
    )


def fidelity_line(f: dict) -> str:
    """One line of a split's fidelity: KID x 10^3 (mean ± std over subsets) and FD, with the real-vs-real floor."""
    g, fl = f["generated"], f["floor"]
    return (
        f"fidelity: KID x10^3 {1e3 * g['kid']:.1f} ± {1e3 * g['kid_std']:.1f} (real vs real "
        f"{1e3 * fl['kid']:.1f} ± {1e3 * fl['kid_std']:.1f}), FD {g['fd']:.2f} (floor {fl['fd']:.2f}); "
        f"{g['n_generated']} images vs {f['reference']}; features: {f['features']}"
    )


def print_trained(console, path: Path, info: dict) -> None:
    """The held-out accuracies and training facts of a freshly trained evaluator."""
    from rich.table import Table

    table = Table(title="own evaluator: held-out accuracy (course metric, scenes never seen in training)")
    table.add_column("held-out set")
    table.add_column("accuracy", justify="right")
    for name, acc in info["heldout"].items():
        table.add_row(name, f"{acc:.4f}")
    console.print(table)
    t = info["train"]
    console.print(
        f"trained {t['steps']} steps ({t['images_seen']:,} images, pool {t['pool']:,}) in "
        f"{t['train_s'] / 60:.1f} min on {t['device']} ({t['threads']} threads); data preparation "
        f"{t['prepare_s'] / 60:.1f} min; final loss {t['final_loss']:.4f}"
    )
    console.print(f"saved: {path}")
