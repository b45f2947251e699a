"""Catalog scaling for the report: experiments/bench/bench_epoch.py results.json -> table and plot.

``experiments/report.py`` calls these; ``experiments/bench/study.py scaling`` writes one results.json
per (preset, loss) under ``<study>/scaling/``. A row with an ``error`` (CE out of memory on a
large catalog) carries no catalog size: it is taken from a sibling row or from the synthetic
preset of that name, and the plot marks it at the top edge.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from experiments.output import markdown_table

LOSS_ORDER = ("ce", "cce", "cce_exact")  # rows and columns in this order; other losses after, by name


class ScalingError(ValueError):
    """A results.json that is missing or not bench_epoch's; reported as one ``error:`` line."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _loss_rank(loss: str) -> tuple:
    return (LOSS_ORDER.index(loss), loss) if loss in LOSS_ORDER else (len(LOSS_ORDER), loss)


def find_scaling_files(explicit: list[Path], run_paths: list[Path]) -> list[Path]:
    """results.json files given with --scaling, else those under a 'scaling' folder of the runs."""
    found: set[Path] = set()
    for path in explicit:
        if not path.exists():
            raise ScalingError(f"{path} does not exist")
        found.update([path.resolve()] if path.is_file() else
                     (p.resolve() for p in path.rglob("results.json")))
    if not explicit:
        for root in (p for p in run_paths if p.is_dir()):
            found.update(p.resolve() for p in root.rglob("results.json")
                         if "scaling" in p.relative_to(root).parts[:-1])
    if explicit and not found:
        raise ScalingError(f"no results.json under {', '.join(map(str, explicit))}")
    return sorted(p for p in found if not any(".failed-" in part for part in p.parts))


def _study_date(results: Path) -> str | None:
    """Finishing time that study.py recorded for a bench run (results.json of older benches
    carries none): ``<study>/study.json`` entry ``scaling/<run folder>``."""
    run = results.parent
    study = run.parent.parent / "study.json"
    try:
        entry = json.loads(study.read_text())["runs"][f"{run.parent.name}/{run.name}"]
        return entry.get("finished_utc")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_scaling(files: list[Path]) -> tuple[list[dict], list[dict]]:
    """(rows with n_items filled in, env records) of bench_epoch results.json files."""
    from core.data.synthetic import PRESETS

    rows, envs = [], []
    for path in files:
        try:
            record = json.loads(path.read_text())
            file_rows, env = list(record["rows"]), dict(record["env"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ScalingError(f"{path}: not a bench_epoch results.json ({err!r})") from None
        if not env.get("finished_utc") and _study_date(path):
            env["finished_utc"] = _study_date(path)
        envs.append(env)
        for row in file_rows:
            if not isinstance(row, dict) or "dataset" not in row or "loss" not in row:
                raise ScalingError(f"{path}: a row without dataset and loss")
            rows.append({**row, "device": env.get("device")})
    # An error row (e.g. out of memory) carries no size: take it from a sibling row or the preset.
    sizes = {r["dataset"]: r["n_items"] for r in rows if r.get("n_items")}
    for row in rows:
        row["n_items"] = row.get("n_items") or sizes.get(row["dataset"]) or \
            PRESETS.get(row["dataset"], {}).get("n_items")
        if row["n_items"] is None:
            _warn(f"scaling row {row['dataset']}/{row['loss']}: catalog size unknown, left out of the plot")
    if len({r["device"] for r in rows}) > 1:
        _warn("scaling rows from different devices; timings mix machines")
    return sorted(rows, key=lambda r: (r["n_items"] or 0, _loss_rank(r["loss"]))), envs


def _is_oom(row: dict) -> bool:
    return "OutOfMemory" in row["error"] or "out of memory" in row["error"].lower()


def scaling_section(rows: list[dict]) -> str:
    """The catalog-scaling table: one line per bench row, errors (OOM) spelled out."""
    head = ["Catalog (items)", "Loss", "Variant", "Epoch (s)", "Steps/s", "Peak (GiB)", "Result"]
    lines = []
    for r in rows:
        items = "—" if r["n_items"] is None else f"{r['n_items']:,}"
        if r.get("error"):
            result = ("out of memory: " if _is_oom(r) else "error: ") + r["error"].replace("|", "/")
            cells = [items, r["loss"], r.get("variant", ""), "—", "—", "—", result]
        else:
            cells = [items, r["loss"], r.get("variant", ""), f"{r['epoch_s']:.1f}",
                     f"{r['steps_per_s']:.1f}", "—" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f}",
                     f"{r['dataset']}, {r['n_users']:,} users, {r['steps_per_epoch']:,} steps"]
        lines.append(cells)
    return "\n".join([
        "## Catalog scaling", "",
        ("`experiments/bench/bench_epoch.py`: one training epoch (GPU synchronized, evaluation excluded) "
        "after untimed warm-up steps; peak = torch.cuda.max_memory_allocated over the run. "
        "Plot: `scaling.png` (out-of-memory points marked ×)."), "", markdown_table(head, lines, align="rllrrrl")])


def _size_label(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k" if n >= 1000 else str(n)


def plot_scaling(rows: list[dict], path: Path, plt, colors: dict[str, str]) -> None:
    """Epoch time and peak memory vs catalog size (log x), one line per loss (and variant)."""
    rows = [r for r in rows if r["n_items"]]
    variants = {r["variant"] for r in rows if r.get("variant") and not r.get("error")}
    by_variant = len(variants) > 1  # else one line per loss, its error rows with it
    lines = dict.fromkeys((r["loss"], r.get("variant") if by_variant else None) for r in rows)
    # colour = loss; several variants of one loss differ by linestyle
    dashes = {v: ("-", "--", ":", "-.")[i % 4] for i, v in enumerate(sorted(variants, key=str))}
    sizes = sorted({r["n_items"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, ylabel in zip(axes, ("epoch_s", "peak_gib"), ("epoch time (s)", "peak GPU memory (GiB)")):
        top = max((r[key] for r in rows if not r.get("error") and r.get(key) is not None), default=1.0)
        for loss, variant in lines:
            mine = [r for r in rows if r["loss"] == loss and (not by_variant or r.get("variant") == variant)]
            label = loss if variant is None else f"{loss} ({variant})"
            ok = [r for r in mine if not r.get("error") and r.get(key) is not None]
            if ok:
                ax.plot([r["n_items"] for r in ok], [r[key] for r in ok], marker="o",
                        color=colors[loss], linestyle=dashes.get(variant, "-"), label=label)
            failed = [r for r in mine if r.get("error")]
            if failed:  # no value to plot: marked above the highest point, at its catalog size
                kind = "out of memory" if all(map(_is_oom, failed)) else "error"
                ax.scatter([r["n_items"] for r in failed], [top * 1.12] * len(failed), marker="x",
                           s=70, color=colors[loss], label=f"{label}: {kind}")
        ax.set_ylim(0, top * 1.25)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [_size_label(n) for n in sizes])
        ax.minorticks_off()
        ax.set(xlabel="catalog size (items)", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
