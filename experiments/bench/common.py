"""What every benchmark here shares: bad-argument errors, output folders, error rows, timing
(device sync, phase clocks, sync counting), the results files and the datasets a benchmark runs on.

bench_epoch.py and bench_eval.py both import from here and never from each other; the Markdown
table and the environment record come from ``experiments/output.py`` (shared with kernels_bench).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch

import gin
from core.atomic import unwritable, write_json, write_text
from core.data.shards import DataFormatError
from core.data.synthetic import PRESETS
from core.dataset_config import DataMissingError, dataset
from core.gin_search import add_root
from core.paths import REPO_ROOT
from experiments.output import markdown_table

GIB = 2**30
add_root(REPO_ROOT)  # data configs include each other from the root


class BenchError(ValueError):
    """Bad arguments or data; printed as one ``error:`` line."""


def utc_now() -> str:
    """The time a result was written, stored in the result itself (never scraped from logs)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def default_out(kind: str) -> Path:
    """``runs/<kind>/<UTC time>``: a benchmark's output folder when --out is not given."""
    return Path(f"runs/{kind}/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")


def output_folder(out: str | None, kind: str) -> Path:
    """``--out`` (default ``default_out(kind)``), refused with a BenchError when it cannot be
    made a folder: checked before the benchmark loads or runs anything."""
    path = Path(out) if out else default_out(kind)
    problem = unwritable(path)
    if problem:
        raise BenchError(f"cannot write --out {path}: {problem}")
    return path


def error_row(err: BaseException, **keys) -> dict:
    """The result row of a run that raised (e.g. out of memory): ``keys`` plus ``error``."""
    first = (str(err).strip().splitlines() or [""])[0]
    return {**keys, "error": f"{type(err).__name__}: {first}"[:200]}


def split_list(text: str) -> list[str]:
    """``"a, b,"`` -> ["a", "b"]: comma-separated command-line lists."""
    return [t.strip() for t in text.split(",") if t.strip()]


def sync(device: torch.device) -> None:
    """Waits for the device (a no-op on the CPU): timings start and end on an idle device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mark(stamps: list, device: torch.device, name: str = "") -> None:
    """Appends (name, CUDA event or None, host time): a phase boundary."""
    event = None
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
    stamps.append((name, event, time.perf_counter()))


def phase_ms(stamps: list) -> list[tuple[str, float]]:
    """(name of the phase's end mark, ms) between consecutive marks: CUDA event time on the
    GPU (what the device spent, launch gaps included), the host clock on the CPU."""
    out = []
    for (_, ev0, t0), (name, ev1, t1) in zip(stamps, stamps[1:]):
        out.append((name, ev0.elapsed_time(ev1) if ev0 is not None else (t1 - t0) * 1e3))
    return out


def count_syncs(run_once, *, times: int) -> tuple[float, list[str]]:
    """(device->host syncs per call, distinct call sites) of ``times`` calls of ``run_once()``
    under CUDA's sync debug mode."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(times):
                run_once()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    hits = [w for w in caught if "synchroniz" in str(w.message)]
    return len(hits) / times, sorted({f"{Path(w.filename).name}:{w.lineno}" for w in hits})


def profile_markdown(title: str, prof: dict) -> str:
    """``kernel_profile``'s result as a Markdown table under ``title``."""
    rows = [[f"{k['ms']:.4f}", f"{k['calls']:g}", k["kernel"][:120].replace("|", "/")] for k in prof["kernels"]]
    rows.append([f"{prof['other_ms']:.4f}", "", "(the rest)"])
    return (f"### {title}\n\nGPU time per step {prof['total_ms']:.3f} ms (torch.profiler, device "
            f"time, mean of {prof['steps']} steps)\n\n" + markdown_table(["ms/step", "calls/step", "kernel"], rows) + "\n")


def results_table(rows: list[dict], *, head: list[str], keys: list[tuple[str, int]], lead: int,
                  footer: str) -> str:
    """A Markdown table of ``rows``: ``keys`` = (column, decimals) under ``head``; an error row
    shows its first ``lead`` cells and the error. ``footer``: the line under the table."""
    lines = []
    for row in rows:
        if row.get("error"):
            cells = [fmt(row.get(k), 0) for k, _ in keys[:lead]]
            cells += ["error: " + row["error"].replace("|", "/")]
            cells += [""] * (len(head) - len(cells))
        else:
            cells = [fmt(row.get(k), d) for k, d in keys]
        lines.append(cells)
    return "\n".join([markdown_table(head, lines), "", footer]) + "\n"


def write_results(out: Path, rows: list[dict], *, columns: list[str], table: str, env: dict, args,
                  notes: list[str] = ()) -> None:
    """results.csv (``columns``), results.md (``table`` and ``notes``) and results.json (rows,
    environment with the finishing date, arguments, notes), rewritten whole after every run."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([{k: r.get(k) for k in columns} for r in rows], columns=columns)
    write_text(frame.to_csv(index=False), out / "results.csv")
    write_text(table + "".join(f"\n{n}\n" for n in notes), out / "results.md")
    env = {**env, "finished_utc": utc_now()}  # the result's own date (report.py reads it)
    write_json({"env": env, "args": vars(args), "notes": list(notes), "rows": rows}, out / "results.json")


def fmt(value, digits: int) -> str:
    """A table cell: n/a for missing values, thousands separators for numbers."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def load_datasets(args) -> list[tuple[str, object]]:
    """(name, SequenceData) for every ``--preset`` and ``--gin`` data config, in order."""
    out = []
    overrides = {"n_users": args.n_users} if args.n_users else {}
    for preset in args.preset:
        if preset not in PRESETS:
            raise BenchError(f"unknown preset {preset!r} (known: {', '.join(sorted(PRESETS))})")
        ds = dataset(name=preset, synthetic_preset=preset, synthetic_overrides=overrides,
                     cache_dir=args.cache_dir)
        out.append((ds.name, ds.data))
    for config in args.gin:
        gin.clear_config()
        try:
            # A whole experiment config works too: only its dataset.* bindings are used.
            gin.parse_config_files_and_bindings([config], [], skip_unknown=True)
            ds = dataset()
        except (DataMissingError, DataFormatError) as err:
            raise BenchError(str(err).splitlines()[0]) from err
        except (ValueError, OSError, SyntaxError, KeyError, TypeError) as err:
            raise BenchError(f"bad data config {config}: {' '.join(str(err).split())}") from err
        finally:
            gin.clear_config()  # nothing may leak into the model or the losses
        out.append((ds.name, ds.data))
    return out
