"""Plots of a sweep, made from its results.csv alone (so they can be redrawn later).

    python kernels_bench/plots.py runs/kernels_bench/<stamp>/results.csv

time.png: time vs V, log-log, one panel per mode (rows) and input kind (columns), one line per
provider with its 20th-80th percentile band, the arithmetic floor dashed. memory.png: peak
extra memory vs V of the fw-bw step (or the last mode swept), one panel per input kind; not
written when no memory was measured (a CPU sweep), rather than an empty plot.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from core.atomic import write_bytes  # noqa: E402

MODE_ORDER = ("fw", "bw", "fw-bw")


def _panel(ax, part: pd.DataFrame, *, band: bool, floor: bool) -> bool:
    """Draws one provider line per provider (ok points only); False if nothing was drawn."""
    drawn = False
    for provider, rows in part.groupby("provider", sort=False):
        ok = rows[(rows.status == "ok") & rows.value.notna()].sort_values("V")
        if ok.empty:
            continue
        (line,) = ax.plot(ok.V, ok.value, marker="o", markersize=3, label=provider)
        if band:
            ax.fill_between(ok.V, ok.p20, ok.p80, color=line.get_color(), alpha=0.2)
        drawn = True
    if floor and drawn:
        fl = part.drop_duplicates("V").sort_values("V")
        ax.plot(fl.V, fl.floor_ms, "k--", linewidth=1, label="arithmetic floor")
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
    return drawn


MEMORY_NOT_PLOTTED = "memory.png not written: no memory was measured (a CPU sweep)"


def memory_measured(df: pd.DataFrame) -> bool:
    """Whether any point has a measured memory value (never on CPU, where it is NaN)."""
    mems = df[(df.metric == "memory_mib") & (df.status == "ok")]
    return bool(mems.value.notna().any())


def _save(fig, path: Path) -> None:
    """The figure as a PNG at ``path``, written atomically; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format="png")
    plt.close(fig)
    write_bytes(buffer.getvalue(), path)


def make_plots(csv_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Writes time.png and, where memory was measured, memory.png into ``out_dir``; returns the
    paths written."""
    df = pd.read_csv(csv_path)
    out_dir = Path(out_dir)
    kinds = list(dict.fromkeys(df["inputs"])) or ["-"]
    modes = [m for m in MODE_ORDER if m in set(df["mode"])] or ["fw-bw"]
    title = f"{df.device.iloc[0]}, N={df.N.iloc[0]:,}, D={df.D.iloc[0]}" if len(df) else "no data"

    fig, axes = plt.subplots(
        len(modes), len(kinds), figsize=(5.5 * len(kinds), 4 * len(modes)), squeeze=False
    )
    times = df[df.metric == "time_ms"]
    for i, mode in enumerate(modes):
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            part = times[(times["mode"] == mode) & (times.inputs == kind)]
            if not _panel(ax, part, band=True, floor=True):
                ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
            ax.set_title(f"{mode}, {kind} inputs")
            ax.set_xlabel("catalog size V")
            ax.set_ylabel("time (ms)")
            ax.grid(True, which="both", alpha=0.3)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}  # one per label
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles))
    fig.suptitle(f"Loss time vs catalog size: {title}")
    fig.tight_layout(rect=(0, 0.04, 1, 1))  # room for the shared legend
    time_png = out_dir / "time.png"
    _save(fig, time_png)

    if not memory_measured(df):
        return [time_png]
    mem_mode = "fw-bw" if "fw-bw" in modes else modes[-1]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    mems = df[(df.metric == "memory_mib") & (df["mode"] == mem_mode)]
    for j, kind in enumerate(kinds):
        ax = axes[0][j]
        if not _panel(ax, mems[mems.inputs == kind], band=False, floor=False):
            ax.text(0.5, 0.5, "no memory measured", ha="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize=8)
        ax.set_title(f"{mem_mode}, {kind} inputs")
        ax.set_xlabel("catalog size V")
        ax.set_ylabel("peak extra memory (MiB)")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Loss peak memory vs catalog size: {title}")
    fig.tight_layout()
    memory_png = out_dir / "memory.png"
    _save(fig, memory_png)
    return [time_png, memory_png]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Redraw a sweep's plots from its results.csv")
    parser.add_argument("csv", help="results.csv of a sweep; plots are written next to it")
    args = parser.parse_args()
    written = make_plots(args.csv, Path(args.csv).parent)
    for path in written:
        print(path)
    if not any(path.name == "memory.png" for path in written):
        print(MEMORY_NOT_PLOTTED)
