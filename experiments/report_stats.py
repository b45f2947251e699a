"""The report's statistics: mean ± sample std over seeds, table rows, per-seed differences."""

from __future__ import annotations

import statistics

from experiments.report_runs import METRICS, RunResult, label_variants, warn
from experiments.report_scaling import LOSS_ORDER

POPULARITY = "popularity"


def mean_std(values: list[float]) -> tuple[float, float | None] | None:
    """Mean and sample std (None for one value) of the non-missing values; None if none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def loss_key(loss: str) -> tuple:
    """Table order of a loss: LOSS_ORDER first, then the others by name, popularity last."""
    if loss == POPULARITY:
        return (2, loss)
    return (0, LOSS_ORDER.index(loss), loss) if loss in LOSS_ORDER else (1, 0, loss)


def summarize(runs: list[RunResult]) -> list[dict]:
    """One row per (dataset, loss, settings) plus a popularity row per dataset, in table order.

    A row maps each metric / "memory" / "epoch_time" to ``mean_std(...)``, "n" to the number of
    runs (None for the popularity row) and "label" to the loss with its variant (RunResult.label).
    """
    groups: dict[tuple, list[RunResult]] = {}
    for run in label_variants(runs):
        groups.setdefault((run.dataset, run.loss, run.settings), []).append(run)
    rows = []
    for (dataset, loss, _), members in groups.items():
        label = members[0].label
        seeds = [r.seed for r in members]
        if len(set(map(str, seeds))) < len(seeds):
            warn(f"{dataset}/{label}: repeated seeds {seeds}; every run counts once")
        if len({r.env.get("device") for r in members}) > 1:
            warn(f"{dataset}/{label}: runs from different devices; timings mix machines")
        row = {"dataset": dataset, "loss": loss, "label": label, "n": len(members)}
        row |= {m: mean_std([r.test[m] for r in members]) for m in METRICS}
        row["memory"] = mean_std([r.peak_memory_gib for r in members])
        row["epoch_time"] = mean_std([r.epoch_time_s for r in members])
        rows.append(row)
    for dataset in sorted({r.dataset for r in runs}):
        members = [r for r in runs if r.dataset == dataset]
        if any(r.popularity_test is None for r in members):  # --split valid: no baseline row
            continue
        row = {"dataset": dataset, "loss": POPULARITY, "label": POPULARITY, "n": None,
               "memory": None, "epoch_time": None}
        for m in METRICS:
            values = [r.popularity_test[m] for r in members]
            # The baseline depends on the data only: identical values are one number, not a spread.
            same = max(values) - min(values) <= 1e-12
            row[m] = (values[0], None) if same else mean_std(values)
        rows.append(row)
    return sorted(rows, key=lambda row: (row["dataset"], loss_key(row["loss"]), row["label"]))


def difference(a: list[RunResult], b: list[RunResult], metric: str) -> str:
    """``a - b``: mean ± std of per-seed differences (n pairs), else the difference of means."""
    by_seed = {str(r.seed): r.test[metric] for r in b if r.seed is not None}
    pairs = [r.test[metric] - by_seed[str(r.seed)] for r in a if str(r.seed) in by_seed]
    if pairs:
        mean, std = mean_std(pairs)
        return f"{mean:+.4f}" + ("" if std is None else f" ± {std:.4f}") + f" ({len(pairs)})"
    mean_a, mean_b = (statistics.fmean(r.test[metric] for r in g) for g in (a, b))
    return f"{mean_a - mean_b:+.4f} (means)"
