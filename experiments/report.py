"""Run folders -> the seed's results table (Markdown) and PNG plots.

    python experiments/report.py RUN_DIR [RUN_DIR ...] --out DIR

Every ``metrics.json`` under the given folders (searched recursively) is one run. Runs are
grouped by dataset name, loss (metrics.json's "loss") and their settings (metrics.json's
"settings": model, loss settings, optimizer, schedule, evaluation, step, data, parallel) minus
the seed, which is what a group averages over (``experiments/report_runs.py``). A group with
several seeds shows mean ± sample std (ddof=1). When one (dataset, loss) ran with several
settings, each is its own row, labelled by the settings that differ within that (dataset, loss),
e.g. ``cce (optimizer.lr=0.01)``. A run whose metrics.json predates the "settings" section (the
runs committed under ``results/``) is grouped by (dataset, loss) only, with a warning and a line
in the report. Each dataset also gets its popularity-baseline row.

Writes (``--out`` is checked first: a path under a file or on a read-only mount is one
``error:`` line, exit 2, before any run is read) ``DIR/report.md``, ``DIR/valid_ndcg.png`` (one curve per run: colour = row, linestyle =
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

Modules: ``report_runs`` (reading and grouping), ``report_stats`` (means, stds, differences),
``report_markdown`` and ``report_plots`` (rendering), ``report_scaling`` (the bench rows).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.atomic import unwritable, write_bytes
from experiments.report_markdown import coverage_section, dates_line, header_line, results_table
from experiments.report_markdown import study_section
from experiments.report_plots import plot_bars, plot_validation, png, pyplot, row_colors
from experiments.report_runs import ReportError, RunResult, find_metrics_files, grouping_note
from experiments.report_runs import label_variants, read_run
from experiments.report_scaling import ScalingError, find_scaling_files, load_scaling, plot_scaling
from experiments.report_scaling import scaling_section
from experiments.report_stats import summarize


def write_report(runs: list[RunResult], out: Path, *, scaling: list[dict] = (),
                 scaling_envs: list[dict] = (), extra_sections: list[str] = (), split: str = "test") -> str:
    """Writes report.md and the PNGs into ``out``; returns the report text. Everything is
    rendered before the first file is written, so a failure leaves no partial report."""
    plt = pyplot()
    runs = label_variants(runs)
    rows = summarize(runs)
    colors = row_colors(runs, scaling)
    parts = [header_line(runs, scaling_envs) + "  \n" + dates_line(runs, scaling_envs)]
    if runs:
        parts += [results_table(rows),
                  (f"{'Test' if split == 'test' else 'Validation'}-split metrics of the best-validation "
                   "checkpoint; mean ± sample std over seeds. "
                   "Max Memory = torch.cuda.max_memory_allocated in GiB (— on CPU); Epoch = mean "
                   "training-epoch wall time after the first epoch, evaluation excluded. "
                   + grouping_note(runs))]
    parts += [p for p in (coverage_section(runs), scaling_section(scaling) if scaling else None,
                          *extra_sections) if p]
    text = "\n\n".join(parts) + "\n"
    files = {"report.md": text.encode()}
    if runs:
        files["valid_ndcg.png"] = png(lambda f: plot_validation(runs, f, plt, colors))
    if scaling:
        files["scaling.png"] = png(lambda f: plot_scaling(scaling, f, plt, colors))
    for key, ylabel, name in (("memory", "peak GPU memory (GiB)", "memory.png"),
                              ("epoch_time", "epoch time (s)", "epoch_time.png")):
        if not runs:
            continue
        if any(row[key] for row in rows):
            files[name] = png(lambda f: plot_bars(rows, key, ylabel, f, plt, colors))
        else:
            print(f"note: no run recorded {key}; {name} not written", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_bytes(data, out / name)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or folders holding them")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md and PNGs")
    parser.add_argument("--scaling", type=Path, action="append", default=[],
                        help="bench_epoch results.json or a folder of them (repeatable; default: "
                             "those under a 'scaling' folder of the run folders)")
    parser.add_argument("--split", choices=("test", "valid"), default="test",
                        help="which split's metrics to tabulate (valid: tuning trials, which leave "
                             "the test split unread)")
    args = parser.parse_args(argv)
    problem = unwritable(args.out)
    if problem:  # before any run is read or plotted
        print(f"error: cannot write --out {args.out}: {problem}", file=sys.stderr)
        return 2
    try:
        scaling_files = find_scaling_files(args.scaling, args.runs)
        files = find_metrics_files(args.runs, required=not scaling_files)
        runs = [read_run(path, args.split) for path in files]
        scaling, envs = load_scaling(scaling_files)
        study = study_section(args.runs)
        text = write_report(runs, args.out, scaling=scaling, scaling_envs=envs,
                            extra_sections=[study] if study else [], split=args.split)
    except (ReportError, ScalingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. a disk that fills up while the report is written
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(text, end="")
    print(f"wrote {args.out}/report.md and plots ({len(runs)} runs, {len(scaling)} scaling rows)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
