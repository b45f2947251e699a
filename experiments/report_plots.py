"""The report's plots, rendered to PNG bytes: validation curves, bars of memory and epoch time.

Colours are fixed per row label across all plots (``row_colors``); ``experiments/report.py``
writes the bytes (through ``core.atomic``).
"""

from __future__ import annotations

import io
from pathlib import Path

from experiments.report_runs import RunResult
from experiments.report_stats import POPULARITY, loss_key

LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "v", "D")


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(draw) -> bytes:
    """The PNG that ``draw(target)`` saves (``fig.savefig(target)`` takes a file object too)."""
    buffer = io.BytesIO()
    draw(buffer)
    return buffer.getvalue()


def row_colors(runs: list[RunResult], scaling: list[dict]) -> dict[str, str]:
    """One colour per row label (loss, or loss with variant) across all plots; scaling by loss."""
    labels = {r.label: r.loss for r in runs} | {r["loss"]: r["loss"] for r in scaling}
    return {label: f"C{i % 10}" for i, label in
            enumerate(sorted(labels, key=lambda label: (loss_key(labels[label]), label)))}


def line_styles(runs: list[RunResult], colors: dict[str, str]) -> dict[Path, dict]:
    """Per run folder, the matplotlib style of its validation curve: the colour of its row
    (loss and variant), a linestyle and marker of its own among the runs of that row, and a
    legend label naming the loss, variant and seed, so that every curve can be told apart."""
    styles, seen = {}, {}
    for run in runs:
        key = (run.dataset, run.label)
        i = seen[key] = seen.get(key, -1) + 1
        styles[run.path] = {"color": colors[run.label], "linestyle": LINESTYLES[i % len(LINESTYLES)],
                            "marker": MARKERS[i // len(LINESTYLES) % len(MARKERS)],
                            "label": f"{run.label} seed {run.seed}"}
    return styles


def plot_validation(runs: list[RunResult], target, plt, colors: dict[str, str]) -> None:
    """One curve per run: several seeds of one loss differ by linestyle, losses by colour."""
    datasets = sorted({r.dataset for r in runs})
    runs = sorted(runs, key=lambda r: (loss_key(r.loss), r.label, str(r.seed)))  # legend in table order
    styles = line_styles(runs, colors)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        drawn = False
        for run in (r for r in runs if r.dataset == dataset and r.valid_ndcg):
            epochs, ndcg = zip(*run.valid_ndcg)
            ax.plot(epochs, ndcg, markersize=3, **styles[run.path])
            drawn = True
        ax.set(title=dataset, xlabel="epoch", ylabel="validation NDCG@10")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if drawn:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(target, dpi=120, format="png")
    plt.close(fig)


def plot_bars(rows: list[dict], key: str, ylabel: str, target, plt, colors: dict[str, str]) -> None:
    """``key`` ("memory" or "epoch_time") of the table rows as bars with std error bars."""
    rows = [r for r in rows if r["loss"] != POPULARITY and r[key] is not None]
    datasets = sorted({r["dataset"] for r in rows})
    # one bar series per row label (a loss, or a loss with its variant), in table order
    order = {r["label"]: (loss_key(r["loss"]), r["label"]) for r in rows}
    losses = sorted(order, key=order.get)
    width = 0.8 / len(losses)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(datasets) * len(losses)), 3.8))
    for i, loss in enumerate(losses):
        xs, means, stds = [], [], []
        for j, dataset in enumerate(datasets):
            match = [r for r in rows if r["dataset"] == dataset and r["label"] == loss]
            if match:
                mean, std = match[0][key]
                xs.append(j + (i - (len(losses) - 1) / 2) * width)
                means.append(mean)
                stds.append(0.0 if std is None else std)
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=loss, color=colors[loss])
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(target, dpi=120, format="png")
    plt.close(fig)
