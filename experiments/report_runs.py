"""Run folders for the report: reading metrics.json / history.jsonl and grouping runs by settings.

A run's settings are metrics.json's "settings" section (``core.training.train`` writes it:
model, loss with its settings, optimizer, schedule, evaluation, step, data, parallel, seed).
Runs are grouped by dataset, loss and those settings minus ``IGNORED_SETTINGS`` (the seed: the
seeds are what a group averages over). A metrics.json written before the section existed (the
runs committed under ``results/`` from 2026-11) has none: such a run is grouped by dataset and
loss only, and the report says how many runs were.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

METRICS = ("HitRate@10", "NDCG@10", "MRR@10", "Coverage@10", "Surprisal@10")
# Settings (flattened names) that do not change what is trained or measured.
IGNORED_SETTINGS = ("seed",)
NO_SETTINGS = "no settings recorded"


class ReportError(Exception):
    """A run folder is missing or malformed; reported as one ``error:`` line."""


@dataclass(frozen=True)
class RunResult:
    """What the report needs from one run folder."""

    path: Path
    dataset: str
    loss: str
    seed: object
    test: dict
    popularity_test: dict | None  # None for --split valid
    peak_memory_gib: float | None
    epoch_time_s: float | None
    env: dict
    valid_ndcg: list[tuple[int, float]]  # (epoch, validation NDCG@10) from history.jsonl
    date: str | None = None  # YYYY-MM-DD the run finished
    settings: tuple[tuple[str, str], ...] | None = None  # flattened settings minus IGNORED_SETTINGS
    variant: str = ""  # what sets this run's settings apart within its (dataset, loss); see label_variants
    loss_ran: str | None = None  # metrics.json "loss_ran": what computed ``loss`` (None: not recorded)

    @property
    def label(self) -> str:
        """The loss, with what differs from the other settings of this (dataset, loss) if any."""
        return f"{self.loss} ({self.variant})" if self.variant else self.loss


def warn(message: str) -> None:
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
        warn(f"{path} not found: this run has no validation curve")
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


def flat_settings(settings: dict, where: Path) -> tuple[tuple[str, str], ...]:
    """metrics.json's "settings" as sorted (dotted name, value as JSON text) pairs minus
    IGNORED_SETTINGS: ``{"optimizer": {"lr": 0.01}}`` -> ``(("optimizer.lr", "0.01"),)``."""
    if not isinstance(settings, dict):
        raise ReportError(f"{where}: 'settings' must be a JSON object")
    flat: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}{key}.", inner)
        else:
            flat[prefix[:-1]] = json.dumps(value, sort_keys=True)

    walk("", settings)
    return tuple(sorted((k, v) for k, v in flat.items() if k not in IGNORED_SETTINGS))


def _split_key(record: dict, split: str, where: Path) -> str:
    if split == "test" and record.get("test", {}) is None:
        raise ReportError(f"{where}: the test split was not evaluated (train.test = False: a tuning "
                          "trial); report such runs with --split valid")
    return split


def read_run(metrics_path: Path, split: str = "test") -> RunResult:
    """Reads one run folder (metrics.json and history.jsonl); ``split`` "valid" reports the
    best checkpoint's validation metrics instead of the test's (tuning trials have no test)."""
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
    settings = record.get("settings")
    return RunResult(
        path=metrics_path.parent,
        dataset=str(_get(dataset, "name", metrics_path)),
        loss=str(_get(record, "loss", metrics_path)),
        seed=env.get("seed"),
        test=_metric_dict(record, _split_key(record, split, metrics_path), metrics_path),
        popularity_test=_metric_dict(record, "popularity_test", metrics_path) if split == "test" else None,
        peak_memory_gib=None if memory is None else float(memory),
        epoch_time_s=None if epoch_time is None else float(epoch_time),
        env=env,
        valid_ndcg=_read_history(metrics_path.parent / "history.jsonl"),
        date=str(finished)[:10] if finished else None,  # dates come from the run's own record only
        settings=None if settings is None else flat_settings(settings, metrics_path),
        loss_ran=record.get("loss_ran"),
    )


def _label(value: str) -> str:
    """A setting's JSON text as a label shows it: strings without their quotes."""
    decoded = json.loads(value)
    return decoded if isinstance(decoded, str) else value


def label_variants(runs: list[RunResult]) -> list[RunResult]:
    """The runs with ``variant`` set: the settings on which this run differs from the other
    runs of its (dataset, loss), as ``name=value, ...``; empty if they all share one.

    A setting absent from a run shows as ``name=unset``; a run without settings (an older
    metrics.json) as ``no settings recorded`` when others of its (dataset, loss) have them.
    """
    families: dict[tuple[str, str], list[RunResult]] = {}
    for run in runs:
        families.setdefault((run.dataset, run.loss), []).append(run)
    labelled = {}
    for members in families.values():
        configs = list(dict.fromkeys(r.settings for r in members))
        if len(configs) == 1:
            labelled |= {id(r): r for r in members}
            continue
        as_dicts = {c: dict(c or ()) for c in configs}
        keys = sorted({k for d in as_dicts.values() for k in d})
        differ = [k for k in keys if len({d.get(k) for c, d in as_dicts.items() if c is not None}) > 1]
        for run in members:
            if run.settings is None:
                variant = NO_SETTINGS
            else:
                mine = as_dicts[run.settings]
                variant = ", ".join(f"{k}={_label(mine[k]) if k in mine else 'unset'}" for k in differ)
            labelled[id(run)] = replace(run, variant=variant)
    return [labelled[id(r)] for r in runs]


def grouping_note(runs: list[RunResult]) -> str:
    """Says how runs were grouped into rows (and which runs could not be checked)."""
    note = ("Rows group runs by dataset, loss and their settings (metrics.json \"settings\": model, "
            "loss, optimizer, schedule, evaluation, step, data, parallel) over seeds; a loss run "
            "with several settings has one row per setting, labelled by the settings that differ.")
    missing = sum(r.settings is None for r in runs)
    if missing:
        warn(f"{missing} of {len(runs)} runs have no settings in metrics.json: grouped by dataset "
             "and loss only")
        note += (f" {missing} of {len(runs)} runs predate the settings in metrics.json: they are "
                 "grouped by dataset and loss only, so their hyperparameters are unchecked.")
    stand_ins = sorted({f"{r.loss} ran as {r.loss_ran}" for r in runs if r.loss_ran not in (None, r.loss)})
    if stand_ins:  # e.g. flash_ce on a CPU: its row is plain CE's numbers
        warn(f"some runs ran a stand-in for their loss (no CUDA): {', '.join(stand_ins)}")
        note += f" Rows list the loss asked; some runs ran a stand-in (no CUDA): {', '.join(stand_ins)}."
    return note
