"""The report's Markdown: header lines, the seed's table, coverage vs the gradient filter, and the
runs of a study that did not finish."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.output import markdown_table
from experiments.report_runs import METRICS, RunResult, label_variants, warn
from experiments.report_scaling import LOSS_ORDER
from experiments.report_stats import difference, mean_std

COLUMNS = ("Dataset", "Loss", *METRICS, "Max Memory (GiB)", "Epoch (s)", "n seeds")
ENV_KEYS = (("device", "device"), ("torch", "torch"), ("triton", "triton"),
            ("cut_cross_entropy", "cut-cross-entropy"), ("dtype", "dtype"))
COVERAGE_METRICS = ("Coverage@10", "Surprisal@10", "NDCG@10")
FILTER_PAIRS = (("cce", "ce"), ("cce", "cce_exact"), ("cce_exact", "ce"))


def cell(stat: tuple[float, float | None] | None, digits: int) -> str:
    """``mean ± std`` (the mean alone for one value, — for none) at ``digits`` decimals."""
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def results_table(rows: list[dict]) -> str:
    """The seed's table layout: the rows of ``report_stats.summarize``."""
    return markdown_table(COLUMNS, ([row["dataset"], row["label"], *(cell(row[m], 4) for m in METRICS),
                                     cell(row["memory"], 2), cell(row["epoch_time"], 2),
                                     "—" if row["n"] is None else str(row["n"])] for row in rows))


def header_line(runs: list[RunResult], extra_envs: list[dict] = ()) -> str:
    """Names the device(s) and library versions found in the runs' (and benches') env records."""
    envs = [r.env for r in runs] + list(extra_envs)
    parts = []
    for key, label in ENV_KEYS:
        values = sorted({str(env[key]) for env in envs if env.get(key) is not None})
        parts.append(f"{label} {', '.join(values) if values else 'unknown'}")
    return "Runs on " + "; ".join(parts)


def dates_line(runs: list[RunResult], scaling_envs: list[dict] = ()) -> str:
    """The runs' finishing dates (metrics.json ``finished_utc``), saying how many are undated."""
    bench_dates = {str(e["finished_utc"])[:10] for e in scaling_envs if e.get("finished_utc")}
    dates = sorted({r.date for r in runs if r.date} | bench_dates)
    line = f"Run dates (UTC): {', '.join(dates) if dates else 'unknown'}"
    undated = sum(r.date is None for r in runs)
    if undated:
        line += f"; {undated} runs undated"
    undated_benches = sum(not e.get("finished_utc") for e in scaling_envs)
    if undated_benches:
        line += f"; {undated_benches} catalog-scaling results undated (no date recorded)"
    return line


def coverage_section(runs: list[RunResult]) -> str | None:
    """Coverage@10 / Surprisal@10 (and NDCG@10) of ce, cce, cce_exact per dataset, with differences.

    Each column holds one setting: where a loss ran with several settings, the losses are
    compared per variant (the label of ``label_variants``), so that no cell mixes hyperparameters.
    """
    head = ["Dataset", "Metric", *LOSS_ORDER, *(f"{a} − {b}" for a, b in FILTER_PAIRS)]
    lines = []
    runs = label_variants(runs)
    for dataset, variant in sorted({(r.dataset, r.variant) for r in runs}):
        groups = {loss: [r for r in runs if (r.dataset, r.variant, r.loss) == (dataset, variant, loss)]
                  for loss in LOSS_ORDER}
        if sum(bool(g) for g in groups.values()) < 2:
            continue
        name = f"{dataset} ({variant})" if variant else dataset
        for metric in COVERAGE_METRICS:
            cells = [cell(mean_std([r.test[metric] for r in groups[loss]]), 4) for loss in LOSS_ORDER]
            cells += [difference(groups[a], groups[b], metric) if groups[a] and groups[b] else "—"
                      for a, b in FILTER_PAIRS]
            lines.append([name, metric, *cells])
    if not lines:
        return None
    return "\n".join([
        "## Coverage and the gradient filter", "",
        ("Test split, mean ± sample std over seeds. A difference column is the mean ± std of the "
         "per-seed differences (number of seed pairs in brackets); \"(means)\" where no seed pairs "
         "up. cce − cce_exact isolates the gradient filter (`filter_eps`); cce_exact − ce the rest "
         "(bf16 operands, the kernel)."), "", markdown_table(head, lines)])


def study_section(run_paths: list[Path]) -> str | None:
    """The runs of any study.json (experiments/bench/study.py) that failed or did not run."""
    lines = []
    for root in (p for p in run_paths if p.is_dir()):
        for path in sorted(root.rglob("study.json")):
            try:
                entries = json.loads(path.read_text())["runs"]
            except (OSError, ValueError, KeyError, TypeError):
                warn(f"{path}: not a study record, ignored")
                continue
            for name, entry in sorted(entries.items()):
                if entry.get("status") != "done":
                    why = entry.get("reason") or ((entry.get("tail") or ["(no output)"])[-1])
                    lines.append([name, str(entry.get("status")), str(why).replace("|", "/")])
    if not lines:
        return None
    return "\n".join(["## Runs that did not finish", "",
                      markdown_table(["Run", "Status", "Last output line / reason"], lines)])
