"""Figures: noise-schedule curves and accuracy bars (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from iclevr.fileio import atomic_path

    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return Path(path)


def plot_schedules(names: Sequence[str], T: int, path: Path) -> Path:
    """Two panels on shared t axes: alpha_bar(t) and log-SNR(t), one curve per schedule."""
    from iclevr import schedules

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    t = range(T)
    for name in names:
        ax1.plot(t, schedules.alpha_bar(name, T).numpy(), label=name)
        ax2.plot(t, schedules.log_snr(name, T).numpy(), label=name)
    ax1.set(title="Signal kept: alpha_bar(t)", xlabel="timestep t", ylabel="alpha_bar(t)", ylim=(0, 1.02))
    ax2.set(title="Signal-to-noise: log SNR(t)", xlabel="timestep t", ylabel="log(alpha_bar / (1 - alpha_bar))")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Noise schedules (T = {T})")
    return _save(fig, path)


def plot_accuracy(rows: list[dict], path: Path) -> Path:
    """Grouped bars: accuracy (mean +- std over seeds) per schedule (groups) and split (bars)."""
    import numpy as np

    from iclevr.labels import ordered_splits

    plt = _pyplot()
    labels = [r["name"] for r in rows]
    found = {s for r in rows for s in r["splits"]}
    splits = ordered_splits(sorted(found))  # val (it chooses) first
    width = 0.8 / max(len(splits), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(labels)), 4))
    x = np.arange(len(labels))
    for j, split in enumerate(splits):
        means = [r["splits"].get(split, {}).get("mean", 0.0) for r in rows]
        stds = [r["splits"].get(split, {}).get("std", 0.0) for r in rows]
        bars = ax.bar(x + (j - (len(splits) - 1) / 2) * width, means, width, yerr=stds, capsize=4, label=split)
        for b, m, sd in zip(bars, means, stds):  # the value above its error bar, not under the cap
            ax.annotate(
                f"{m:.2f}",
                (b.get_x() + b.get_width() / 2, m + sd),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 3),
                textcoords="offset points",
            )
    ax.set_xticks(x, labels)
    ax.set(
        title="Accuracy by noise schedule (course metric, mean ± std over sampling seeds)",
        xlabel="noise schedule",
        ylabel="accuracy",
        ylim=(0, 1.05),
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="split")
    return _save(fig, path)
