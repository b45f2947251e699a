"""Run folders -> the seed's results table (Markdown) and PNG plots.

    python experiments/report.py RUN_DIR [RUN_DIR ...] --out DIR

Every ``metrics.json`` under the given folders (searched recursively) is one run. Runs are
grouped by dataset name, loss (metrics.json's "loss") and their full operative config (the run's
``config.gin``) minus the bindings in ``IGNORED_PARAMS``, which do not change what is trained or
measured: ``seed`` (the seeds are what a group averages over), ``show_progress`` (a progress bar),
``cache_dir`` (where prepared data is cached, not what it holds) and ``prepare_hint`` (the text of
a message). They are matched by parameter name, whatever the configurable (``train.seed``). A group
with several seeds shows mean ± sample std (ddof=1). When one (dataset, loss) ran with several
configs, each config is its own row, labelled by the bindings that differ within that (dataset,
loss), e.g. ``cce (train.lr=0.01)``. A run without config.gin is grouped by (dataset, loss) only,
with a warning and a line in the report. Each dataset also gets its popularity-baseline row.

Writes ``DIR/report.md``, ``DIR/valid_ndcg.png`` (one curve per run: colour = row, linestyle =
seed, legend "loss (variant) seed S"), ``DIR/epoch_time.png`` and, when any run measured GPU
memory, ``DIR/memory.png``; prints the report.

More sections where their inputs exist:
- "Coverage and the gradient filter": per dataset, Coverage@10, Surprisal@10 and NDCG@10 of
  ce / cce / cce_exact side by side with their differences (paired by seed).
- "Catalog scaling" + ``scaling.png``: rows of ``experiments/bench/bench_epoch.py`` results.json files
  given with ``--scaling`` (a file or a folder), else those under a ``scaling`` folder of the
  run folders (what ``experiments/bench/study.py scaling`` writes); out-of-memory rows are marked.
- "Runs that did not finish": the failed / not-run entries of any ``study.json`` found.
The header names the card(s), library versions and run dates (metrics.json ``finished_utc``;
a run without it is counted as undated: no date is guessed from its log).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.report_scaling import (
    LOSS_ORDER,
    ScalingError,
    find_scaling_files,
    load_scaling,
    plot_scaling,
    scaling_section,
)

METRICS = ("HitRate@10", "NDCG@10", "MRR@10", "Coverage@10", "Surprisal@10")
COLUMNS = ("Dataset", "Loss", *METRICS, "Max Memory (GiB)", "Epoch (s)", "n seeds")
# Bindings (by parameter name) that do not change what is trained or measured: see the docstring.
IGNORED_PARAMS = ("seed", "show_progress", "cache_dir", "prepare_hint")
POPULARITY = "popularity"
ENV_KEYS = (("device", "device"), ("torch", "torch"), ("triton", "triton"),
            ("cut_cross_entropy", "cut-cross-entropy"), ("dtype", "dtype"))


class ReportError(Exception):
    """A run folder is missing or malformed; reported as one ``error:`` line."""


@dataclass(frozen=True)
class Run:
    """What the report needs from one run folder."""

    path: Path
    dataset: str
    loss: str
    seed: object
    test: dict
    popularity_test: dict
    peak_memory_gib: float | None
    epoch_time_s: float | None
    env: dict
    valid_ndcg: list[tuple[int, float]]  # (epoch, validation NDCG@10) from history.jsonl
    date: str | None = None  # YYYY-MM-DD the run finished
    config: tuple[tuple[str, str], ...] | None = None  # operative bindings minus IGNORED_PARAMS
    variant: str = ""  # what sets this run's config apart within its (dataset, loss); see label_variants

    @property
    def label(self) -> str:
        """The loss, with what differs from the other configs of this (dataset, loss) if any."""
        return f"{self.loss} ({self.variant})" if self.variant else self.loss


def _warn(message: str) -> None:
    """A non-fatal problem with the runs, said once on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def find_metrics_files(paths: list[Path], *, required: bool = True) -> list[Path]:
    """All metrics.json files under ``paths`` (a path may be a run folder or any parent)."""
    found: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise ReportError(f"{path} does not exist")
        if path.is_file() and path.name == "metrics.json":
            found.add(path.resolve())
        elif path.is_dir():
            found.update(p.resolve() for p in path.rglob("metrics.json"))
    if not found and required:
        raise ReportError(f"no metrics.json found under {', '.join(map(str, paths))}")
    return sorted(found)


def _get(record: dict, key: str, where: Path):
    if key not in record:
        raise ReportError(f"{where}: missing key {key!r}")
    return record[key]


def _metric_dict(record: dict, key: str, where: Path) -> dict:
    values = _get(record, key, where)
    if not isinstance(values, dict) or any(m not in values for m in METRICS):
        raise ReportError(f"{where}: {key!r} must hold {', '.join(METRICS)}")
    return {m: float(values[m]) for m in METRICS}


def _read_history(path: Path) -> list[tuple[int, float]]:
    """(epoch, valid NDCG@10) pairs; an absent history.jsonl gives an empty curve."""
    if not path.exists():
        _warn(f"{path} not found: this run has no validation curve")
        return []
    curve = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if row.get("valid") is None:  # an epoch without validation (train.eval_every > 1)
                continue
            curve.append((int(row["epoch"]), float(row["valid"]["NDCG@10"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ReportError(f"{path}:{line_no}: bad history line ({err!r})") from None
    return curve


def read_config(path: Path) -> tuple[tuple[str, str], ...] | None:
    """A config.gin as sorted (binding, value) pairs minus IGNORED_PARAMS; None if absent.

    Reads gin's operative-config text: ``scope.param = value`` lines, a value continued on
    indented lines (gin wraps long tuples and dicts), ``#`` comments. Values are compared as
    text with whitespace collapsed, which is how gin writes one value every time.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ReportError(f"{path}: cannot read ({err})") from None
    bindings: dict[str, str] = {}
    key = None
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():  # continuation of the previous value
            if key is None:
                raise ReportError(f"{path}:{line_no}: indented line before any binding")
            bindings[key] += " " + line.strip()
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:  # an import or include line: compared as a whole
            key, value = line.strip(), ""
        bindings[key] = value.strip()
    return tuple(sorted((k, " ".join(v.split())) for k, v in bindings.items()
                        if k.rsplit(".", 1)[-1] not in IGNORED_PARAMS))


def load_run(metrics_path: Path) -> Run:
    """Reads one run folder (metrics.json and history.jsonl)."""
    try:
        record = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"{metrics_path}: cannot read ({err})") from None
    if not isinstance(record, dict):
        raise ReportError(f"{metrics_path}: not a JSON object")
    dataset = _get(record, "dataset", metrics_path)
    env = _get(record, "env", metrics_path)
    if not isinstance(dataset, dict) or not isinstance(env, dict):
        raise ReportError(f"{metrics_path}: 'dataset' and 'env' must be JSON objects")
    memory, epoch_time = record.get("peak_memory_gib"), record.get("epoch_time_s")
    finished = record.get("finished_utc")
    date = str(finished)[:10] if finished else None  # dates come from the run's own record only
    return Run(
        path=metrics_path.parent,
        dataset=str(_get(dataset, "name", metrics_path)),
        loss=str(_get(record, "loss", metrics_path)),
        seed=env.get("seed"),
        test=_metric_dict(record, "test", metrics_path),
        popularity_test=_metric_dict(record, "popularity_test", metrics_path),
        peak_memory_gib=None if memory is None else float(memory),
        epoch_time_s=None if epoch_time is None else float(epoch_time),
        env=env,
        valid_ndcg=_read_history(metrics_path.parent / "history.jsonl"),
        date=date,
        config=read_config(metrics_path.parent / "config.gin"),
    )


def label_variants(runs: list[Run]) -> list[Run]:
    """The runs with ``variant`` set: the bindings on which this run's config differs from the
    other configs of its (dataset, loss), as ``name=value, ...``; empty if it has one config.

    A binding absent from a config shows as ``name=unset``; a run without config.gin as
    ``no config.gin``.
    """
    families: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        families.setdefault((run.dataset, run.loss), []).append(run)
    labelled = {}
    for members in families.values():
        configs = list(dict.fromkeys(r.config for r in members))
        if len(configs) == 1:
            labelled |= {id(r): r for r in members}
            continue
        as_dicts = {c: dict(c or ()) for c in configs}
        keys = sorted({k for d in as_dicts.values() for k in d})
        differ = [k for k in keys if len({d.get(k) for c, d in as_dicts.items() if c is not None}) > 1]
        for run in members:
            if run.config is None:
                variant = "no config.gin"
            else:
                mine = as_dicts[run.config]
                variant = ", ".join(f"{k}={mine.get(k, 'unset')}" for k in differ)
            labelled[id(run)] = replace(run, variant=variant)
    return [labelled[id(r)] for r in runs]


def mean_std(values: list[float]) -> tuple[float, float | None] | None:
    """Mean and sample std (None for one value) of the non-missing values; None if none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _loss_key(loss: str) -> tuple:
    if loss == POPULARITY:
        return (2, loss)
    return (0, LOSS_ORDER.index(loss), loss) if loss in LOSS_ORDER else (1, 0, loss)


def summarize(runs: list[Run]) -> list[dict]:
    """One row per (dataset, loss, config) plus a popularity row per dataset, in table order.

    A row maps each metric / "memory" / "epoch_time" to ``mean_std(...)``, "n" to the number of
    runs (None for the popularity row) and "label" to the loss with its variant (Run.label).
    """
    groups: dict[tuple, list[Run]] = {}
    for run in label_variants(runs):
        groups.setdefault((run.dataset, run.loss, run.config), []).append(run)
    rows = []
    for (dataset, loss, _), members in groups.items():
        label = members[0].label
        seeds = [r.seed for r in members]
        if len(set(map(str, seeds))) < len(seeds):
            _warn(f"{dataset}/{label}: repeated seeds {seeds}; every run counts once")
        if len({r.env.get("device") for r in members}) > 1:
            _warn(f"{dataset}/{label}: runs from different devices; timings mix machines")
        row = {"dataset": dataset, "loss": loss, "label": label, "n": len(members)}
        row |= {m: mean_std([r.test[m] for r in members]) for m in METRICS}
        row["memory"] = mean_std([r.peak_memory_gib for r in members])
        row["epoch_time"] = mean_std([r.epoch_time_s for r in members])
        rows.append(row)
    for dataset in sorted({r.dataset for r in runs}):
        members = [r for r in runs if r.dataset == dataset]
        row = {"dataset": dataset, "loss": POPULARITY, "label": POPULARITY, "n": None,
               "memory": None, "epoch_time": None}
        for m in METRICS:
            values = [r.popularity_test[m] for r in members]
            # The baseline depends on the data only: identical values are one number, not a spread.
            same = max(values) - min(values) <= 1e-12
            row[m] = (values[0], None) if same else mean_std(values)
        rows.append(row)
    return sorted(rows, key=lambda row: (row["dataset"], _loss_key(row["loss"]), row["label"]))


def grouping_note(runs: list[Run]) -> str:
    """Says how runs were grouped into rows (and which runs could not be checked)."""
    ignored = ", ".join(IGNORED_PARAMS)
    note = ("Rows group runs by dataset, loss and their full operative config (config.gin) minus "
            f"the bindings that do not change what is trained or measured ({ignored}); a loss "
            "run with several configs has one row per config, labelled by the bindings that differ.")
    missing = sum(r.config is None for r in runs)
    if missing:
        _warn(f"{missing} of {len(runs)} runs have no config.gin: grouped by dataset and loss only")
        note += (f" {missing} of {len(runs)} runs have no config.gin: they are grouped by dataset "
                 "and loss only, so their hyperparameters are unchecked.")
    return note


def _cell(stat: tuple[float, float | None] | None, digits: int) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """The seed's table layout in Markdown."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [row["dataset"], row["label"], *(_cell(row[m], 4) for m in METRICS),
                 _cell(row["memory"], 2), _cell(row["epoch_time"], 2),
                 "—" if row["n"] is None else str(row["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header_line(runs: list[Run], extra_envs: list[dict] = ()) -> str:
    """Names the device(s) and library versions found in the runs' (and benches') env records."""
    envs = [r.env for r in runs] + list(extra_envs)
    parts = []
    for key, label in ENV_KEYS:
        values = sorted({str(env[key]) for env in envs if env.get(key) is not None})
        parts.append(f"{label} {', '.join(values) if values else 'unknown'}")
    return "Runs on " + "; ".join(parts)


def dates_line(runs: list[Run], scaling_envs: list[dict] = ()) -> str:
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


# --- coverage and the gradient filter ------------------------------------------------------

COVERAGE_METRICS = ("Coverage@10", "Surprisal@10", "NDCG@10")
FILTER_PAIRS = (("cce", "ce"), ("cce", "cce_exact"), ("cce_exact", "ce"))


def _difference(a: list[Run], b: list[Run], metric: str) -> str:
    """``a - b``: mean ± std of per-seed differences (n pairs), else the difference of means."""
    by_seed = {str(r.seed): r.test[metric] for r in b if r.seed is not None}
    pairs = [r.test[metric] - by_seed[str(r.seed)] for r in a if str(r.seed) in by_seed]
    if pairs:
        mean, std = mean_std(pairs)
        return f"{mean:+.4f}" + ("" if std is None else f" ± {std:.4f}") + f" ({len(pairs)})"
    mean_a, mean_b = (statistics.fmean(r.test[metric] for r in g) for g in (a, b))
    return f"{mean_a - mean_b:+.4f} (means)"


def coverage_section(runs: list[Run]) -> str | None:
    """Coverage@10 / Surprisal@10 (and NDCG@10) of ce, cce, cce_exact per dataset, with differences.

    Each column holds one config: where a loss ran with several configs, the losses are compared
    per variant (the label of ``label_variants``), so that no cell mixes hyperparameters.
    """
    head = ["Dataset", "Metric", *LOSS_ORDER, *(f"{a} − {b}" for a, b in FILTER_PAIRS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    runs = label_variants(runs)
    for dataset, variant in sorted({(r.dataset, r.variant) for r in runs}):
        groups = {loss: [r for r in runs if (r.dataset, r.variant, r.loss) == (dataset, variant, loss)]
                  for loss in LOSS_ORDER}
        if sum(bool(g) for g in groups.values()) < 2:
            continue
        name = f"{dataset} ({variant})" if variant else dataset
        for metric in COVERAGE_METRICS:
            cells = [_cell(mean_std([r.test[metric] for r in groups[loss]]), 4) for loss in LOSS_ORDER]
            cells += [_difference(groups[a], groups[b], metric) if groups[a] and groups[b] else "—"
                      for a, b in FILTER_PAIRS]
            lines.append("| " + " | ".join([name, metric, *cells]) + " |")
    if len(lines) == 2:
        return None
    return "\n".join([
        "## Coverage and the gradient filter", "",
        ("Test split, mean ± sample std over seeds. A difference column is the mean ± std of the "
        "per-seed differences (number of seed pairs in brackets); \"(means)\" where no seed pairs "
        "up. cce − cce_exact isolates the gradient filter (`filter_eps`); cce_exact − ce the rest "
        "(bf16 operands, the kernel)."), "", *lines])


def study_section(run_paths: list[Path]) -> str | None:
    """The runs of any study.json (experiments/bench/study.py) that failed or did not run."""
    lines = []
    for root in (p for p in run_paths if p.is_dir()):
        for path in sorted(root.rglob("study.json")):
            try:
                entries = json.loads(path.read_text())["runs"]
            except (OSError, ValueError, KeyError, TypeError):
                _warn(f"{path}: not a study record, ignored")
                continue
            for name, entry in sorted(entries.items()):
                if entry.get("status") != "done":
                    why = entry.get("reason") or ((entry.get("tail") or ["(no output)"])[-1])
                    lines.append(f"| {name} | {entry.get('status')} | {str(why).replace('|', '/')} |")
    if not lines:
        return None
    return "\n".join(["## Runs that did not finish", "", "| Run | Status | Last output line / reason |",
                      "|---|---|---|", *lines])


LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "v", "D")


def line_styles(runs: list[Run], colors: dict[str, str]) -> dict[Path, dict]:
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


def _plot_validation(runs: list[Run], path: Path, plt, colors: dict[str, str]) -> None:
    """One curve per run: several seeds of one loss differ by linestyle, losses by colour."""
    datasets = sorted({r.dataset for r in runs})
    runs = sorted(runs, key=lambda r: (_loss_key(r.loss), r.label, str(r.seed)))  # legend in table order
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_bars(rows: list[dict], key: str, ylabel: str, path: Path, plt, colors: dict[str, str]) -> None:
    rows = [r for r in rows if r["loss"] != POPULARITY and r[key] is not None]
    datasets = sorted({r["dataset"] for r in rows})
    # one bar series per row label (a loss, or a loss with its variant), in table order
    order = {r["label"]: (_loss_key(r["loss"]), r["label"]) for r in rows}
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(runs: list[Run], out: Path, *, scaling: list[dict] = (), scaling_envs: list[dict] = (),
                 extra_sections: list[str] = ()) -> str:
    """Writes report.md and the PNGs into ``out`` (all or nothing); returns the report text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = label_variants(runs)
    rows = summarize(runs)
    # one colour per row label (loss, or loss with variant) across all plots; scaling plots by loss
    labels = {r.label: r.loss for r in runs} | {r["loss"]: r["loss"] for r in scaling}
    colors = {label: f"C{i % 10}" for i, label in
              enumerate(sorted(labels, key=lambda label: (_loss_key(labels[label]), label)))}
    parts = [header_line(runs, scaling_envs) + "  \n" + dates_line(runs, scaling_envs)]
    if runs:
        parts += [markdown_table(rows),
                  ("Test-split metrics of the best-validation checkpoint; mean ± sample std over seeds. "
                  "Max Memory = torch.cuda.max_memory_allocated in GiB (— on CPU); Epoch = mean "
                  "training-epoch wall time after the first epoch, evaluation excluded. "
                  + grouping_note(runs))]
    parts += [p for p in (coverage_section(runs), scaling_section(scaling) if scaling else None,
                          *extra_sections) if p]
    text = "\n\n".join(parts) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build everything in a scratch folder first so that a failure leaves no partial report.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        scratch = Path(scratch)
        (scratch / "report.md").write_text(text)
        if runs:
            _plot_validation(runs, scratch / "valid_ndcg.png", plt, colors)
        if scaling:
            plot_scaling(scaling, scratch / "scaling.png", plt, colors)
        for key, ylabel, name in (("memory", "peak GPU memory (GiB)", "memory.png"),
                                  ("epoch_time", "epoch time (s)", "epoch_time.png")):
            if not runs:
                continue
            if any(row[key] for row in rows):
                _plot_bars(rows, key, ylabel, scratch / name, plt, colors)
            else:
                print(f"note: no run recorded {key}; {name} not written", file=sys.stderr)
        out.mkdir(exist_ok=True)
        for file in scratch.iterdir():
            shutil.move(str(file), out / file.name)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or folders holding them")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md and PNGs")
    parser.add_argument("--scaling", type=Path, action="append", default=[],
                        help="bench_epoch results.json or a folder of them (repeatable; default: "
                             "those under a 'scaling' folder of the run folders)")
    args = parser.parse_args(argv)
    try:
        scaling_files = find_scaling_files(args.scaling, args.runs)
        files = find_metrics_files(args.runs, required=not scaling_files)
        runs = [load_run(path) for path in files]
        scaling, envs = load_scaling(scaling_files)
        study = study_section(args.runs)
        text = write_report(runs, args.out, scaling=scaling, scaling_envs=envs,
                            extra_sections=[study] if study else [])
    except (ReportError, ScalingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(text, end="")
    print(f"wrote {args.out}/report.md and plots ({len(runs)} runs, {len(scaling)} scaling rows)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
