"""The results study (issue 7): named plans of runs, each in its own process, resumable.

    python experiments/bench/study.py real synthetic scaling --out $OUT/study \\
        --budget-s 420 --deadline-s 560 --drop-checkpoints [--done-in results/study_h200]
    python experiments/bench/study.py real --dry-run

Every run is a subprocess (``experiments/run.py`` or ``experiments/bench/bench_epoch.py``), so gin
state and GPU memory never carry over from one run to the next. Run ``NAME`` writes into
``--out``/NAME; its output (stdout and stderr) goes to ``--out``/_logs/NAME.log.

Plans (run in the order given, each ordered so that what matters most finishes first):

- ``real``: {beauty5core, ml100k} x {ce, cce, cce_exact} x ``--seeds`` (default 0,1,2), seed
  0 of every config before seed 1; trained to early stopping as the gin files say. Names like
  ``beauty5core_cce_exact_s1`` (``train.seed`` bound).
- ``synthetic``: {ml20m_like, beauty_like} x {ce, cce, cce_exact}, first seed only, for
  ``--epochs`` (default 3) with one validation at the end (``train.eval_every`` = epochs):
  epoch time and peak memory. Names like ``ml20m_like_cce_s0``.
- ``scaling``: ``bench_epoch.py`` over ``--scaling-presets`` (default items-1m, items-4m,
  items-10m) x {cce, ce}, one process per (preset, loss) so that a 10-minute call can hold
  one (CCE on 10M items, about 2,000 steps, may take most of one) and an out-of-memory CE is
  one row with its error. Variant ``static`` (what ``train()`` runs), 1 timed epoch after 20
  warm-up steps. Names like ``scaling/items-4m_ce``.
- ``sampled`` (issue 14): sampled softmax CE, K in {256, 3000} x {uniform, popularity}
  negatives (``gin/loss/sampled_ce.gin``'s settings bound on top of each dataset's ``_ce`` gin
  file): the ``real`` datasets x ``--seeds`` to early stopping, seed 0 of every config first,
  then the ``synthetic`` presets as that plan runs them. Names like
  ``beauty5core_sampled_ce_256_popularity_s1`` (the loss's registry name in the middle).

A run is complete when its folder holds metrics.json (bench: a results.json with its row);
complete runs are skipped. A folder without it (a crash, a killed call) is moved aside to
``NAME.failed-<n>`` and the run starts afresh. A run that exited non-zero (e.g. out of memory)
is recorded in ``--out``/study.json with its last output lines, and later calls skip it
unless ``--retry-failed``; a killed or timed-out run is retried. study.json is rewritten after
every run. Exit status: 0 when every planned run is complete, 1 when some failed or did not
run, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.atomic import unwritable, write_text
from core.paths import REPO_ROOT

PLANS = ("real", "synthetic", "scaling", "sampled")
REAL_DATASETS = ("beauty5core", "ml100k")
SYNTHETIC_DATASETS = ("ml20m_like", "beauty_like")
LOSSES = ("ce", "cce", "cce_exact", "flash_ce")
SCALING_PRESETS = ("items-1m", "items-4m", "items-10m")
SCALING_LOSSES = ("cce", "ce")  # CCE first: it is the one expected to fit
SAMPLED = tuple((k, sampler) for k in (256, 3000) for sampler in ("uniform", "popularity"))
TAIL_LINES = 15


class StudyError(ValueError):
    """Bad arguments; printed as one ``error:`` line."""


@dataclass(frozen=True)
class Step:
    """One planned run: ``argv`` (without the Python interpreter) writes into ``out/name``."""

    name: str
    argv: tuple[str, ...]
    kind: str  # "run" (experiments/run.py) or "bench" (experiments/bench/bench_epoch.py)
    expect: tuple[str, str] | None = None  # bench: the (dataset, loss) row results.json must hold

    @property
    def config(self) -> str:
        """The name without its seed: runs of one config take about as long as each other."""
        return re.sub(r"_s\d+$", "", self.name)


def _run_step(name: str, gin_file: str, bindings: list[str], extra: list[str], out: Path) -> Step:
    argv = ["experiments/run.py", "--gin", gin_file, "--out", str(out / name)]
    for binding in [*bindings, *extra]:
        argv.append(f"--gin_bindings={binding}")
    return Step(name, tuple(argv), "run")


def _synthetic_bindings(seed: int, epochs: int) -> list[str]:
    """``epochs`` epochs with one validation, at the end: epoch time and peak memory."""
    return [f"train.seed = {seed}", f"train.epochs = {epochs}", f"train.eval_every = {epochs}"]


def _sampled_bindings(k: int, sampler: str) -> list[str]:
    return ["train.loss_fn = @sampled_ce", f"sampled_ce.n_negatives = {k}",
            f"sampled_ce.sampler = '{sampler}'"]


def build_plan(plans: list[str], *, out: Path, seeds: list[int], epochs: int = 3,
               binds: list[str] = (), scaling_presets: list[str] = SCALING_PRESETS,
               scaling_users: int | None = None) -> list[Step]:
    """The steps of ``plans`` in run order (see the module docstring)."""
    unknown = [p for p in plans if p not in PLANS]
    if unknown or not plans:
        raise StudyError(f"unknown plan {', '.join(unknown) or '(none)'}: choose from {', '.join(PLANS)}")
    if not seeds or epochs < 1:
        raise StudyError("--seeds needs at least one seed and --epochs must be >= 1")
    steps: list[Step] = []
    for plan in dict.fromkeys(plans):  # a plan named twice runs once
        if plan == "real":
            for seed in seeds:
                for data in REAL_DATASETS:
                    for loss in LOSSES:
                        steps.append(_run_step(f"{data}_{loss}_s{seed}", f"gin/{data}_{loss}.gin",
                                               [f"train.seed = {seed}"], list(binds), out))
        elif plan == "synthetic":
            for data in SYNTHETIC_DATASETS:
                for loss in LOSSES:
                    steps.append(_run_step(f"{data}_{loss}_s{seeds[0]}", f"gin/{data}_{loss}.gin",
                                           _synthetic_bindings(seeds[0], epochs), list(binds), out))
        elif plan == "sampled":
            runs = [(data, [f"train.seed = {seed}"], seed) for seed in seeds for data in REAL_DATASETS]
            runs += [(data, _synthetic_bindings(seeds[0], epochs), seeds[0])
                     for data in SYNTHETIC_DATASETS]
            for data, bindings, seed in runs:
                for k, sampler in SAMPLED:
                    steps.append(_run_step(f"{data}_sampled_ce_{k}_{sampler}_s{seed}",
                                           f"gin/{data}_ce.gin",
                                           [*bindings, *_sampled_bindings(k, sampler)],
                                           list(binds), out))
        else:
            for preset in scaling_presets:
                for loss in SCALING_LOSSES:
                    name = f"scaling/{preset}_{loss}"
                    gin_file = f"gin/{preset.replace('-', '_')}_{loss}.gin"  # items-1m -> items_1m
                    argv = ["experiments/bench/bench_epoch.py", "--gin", gin_file,
                            "--variants", "static", "--epochs", "1", "--warmup-steps", "20",
                            "--sample-steps", "10", "--out", str(out / name)]
                    if scaling_users:
                        argv += ["--gin_bindings",
                                 f"dataset.synthetic_overrides = {{'n_users': {scaling_users}}}"]
                    steps.append(Step(name, tuple(argv), "bench", expect=(preset, loss)))
    return steps


# --- completeness, records ----------------------------------------------------------------


def is_complete(step: Step, folder: Path) -> bool:
    """Whether ``folder`` holds ``step``'s finished output."""
    if step.kind == "run":
        return (folder / "metrics.json").is_file()
    try:
        rows = json.loads((folder / "results.json").read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return any((r.get("dataset"), r.get("loss")) == step.expect for r in rows)


def move_aside(folder: Path) -> Path:
    """Renames a partial run folder to ``<name>.failed-<n>`` (the first free n)."""
    n = 1
    while (target := folder.with_name(f"{folder.name}.failed-{n}")).exists():
        n += 1
    folder.rename(target)
    return target


def summary_of(step: Step, folder: Path) -> str:
    """One short result: test NDCG@10 of a run; epoch time and peak, or the error, of a bench row."""
    try:
        if step.kind == "run":
            return f"test NDCG@10 {json.loads((folder / 'metrics.json').read_text())['test']['NDCG@10']:.4f}"
        rows = json.loads((folder / "results.json").read_text())["rows"]
        row = next(r for r in rows if (r.get("dataset"), r.get("loss")) == step.expect)
        if row.get("error"):
            return f"error row: {row['error']}"
        peak = "n/a" if row.get("peak_gib") is None else f"{row['peak_gib']:.2f} GiB"
        return f"epoch {row['epoch_s']:.1f} s, peak {peak}"
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return "(no result readable)"


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _tail(path: Path, n: int = TAIL_LINES) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if line.strip()][-n:]


class Record:
    """study.json: one entry per run name, rewritten whole after every change."""

    def __init__(self, path: Path):
        self.path = path
        self.runs: dict[str, dict] = {}
        if path.exists():
            try:
                self.runs = json.loads(path.read_text())["runs"]
            except (ValueError, KeyError, TypeError):
                raise StudyError(f"{path} is not a study record; move it away or use another --out") from None

    def update(self, name: str, **fields) -> None:
        self.runs.setdefault(name, {}).update(fields)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(json.dumps({"updated_utc": _utc(), "runs": self.runs}, indent=1) + "\n", self.path)


# --- running ------------------------------------------------------------------------------


def execute(argv: list[str], log_path: Path, timeout: float | None) -> tuple[int | None, bool]:
    """Runs ``argv`` from the repository root, output appended to ``log_path``.

    Returns (exit status, timed out); the status is None when the run was killed at ``timeout``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"--- {_utc()}: {' '.join(argv)}\n")
        log.flush()
        try:
            return subprocess.run(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False).returncode, False
        except subprocess.TimeoutExpired:
            return None, True


def _hold_back(step: Step, record: Record, elapsed: float, *, budget_s: float | None,
               deadline_s: float | None) -> str | None:
    """Why ``step`` must not start now (over the budget, or known not to fit the deadline)."""
    if budget_s is not None and elapsed > budget_s:
        return f"over --budget-s {budget_s:.0f}"
    if deadline_s is None:
        return None
    # The longest finished run of the same config (another seed) is the estimate.
    estimate = max((r.get("seconds") or 0 for name, r in record.runs.items()
                    if r.get("status") == "done" and Step(name, (), "").config == step.config), default=0)
    if elapsed + estimate > deadline_s or elapsed >= deadline_s:
        return f"would pass --deadline-s {deadline_s:.0f} (an earlier run took {estimate:.0f} s)"
    return None


def run_study(steps: list[Step], *, out: Path, budget_s: float | None = None,
              deadline_s: float | None = None, retry_failed: bool = False,
              drop_checkpoints: bool = False, done_in: list[Path] = (), dry_run: bool = False,
              python: str = sys.executable, clock=time.monotonic, say=print) -> dict[str, str]:
    """Runs the steps not yet complete; returns {name: outcome} (done, failed, not run, ...).

    ``budget_s``: start no new run after that many seconds. ``deadline_s``: kill a run still
    going at that many seconds (recorded as timed out, retried by a later call) and start none
    that an earlier run of its config says cannot finish before it.
    """
    began = clock()
    # Runs start in the repository root: ``out`` relative to it (main() makes it so) or absolute.
    out_here = out if out.is_absolute() else REPO_ROOT / out
    record = Record(out_here / "study.json")
    outcomes: dict[str, str] = {}
    for i, step in enumerate(steps, start=1):
        folder = out_here / step.name
        prior = record.runs.get(step.name, {})
        head = f"[{i:>2}/{len(steps)} {clock() - began:5.0f} s] {step.name}:"
        elsewhere = [d for d in done_in if is_complete(step, d / step.name)]
        if is_complete(step, folder) or elsewhere:
            outcomes[step.name] = "complete"
            where = f" (in {elsewhere[0]})" if elsewhere and not is_complete(step, folder) else ""
            if prior.get("argv") not in (None, list(step.argv)):
                where += " (made with other arguments; remove the folder to rerun)"
            say(f"{head} complete{where}, skipped")
            continue
        if prior.get("status") == "failed" and not retry_failed:
            outcomes[step.name] = "failed before"
            say(f"{head} failed before ({(prior.get('tail') or ['?'])[-1]}); --retry-failed reruns it")
            continue
        if dry_run:
            outcomes[step.name] = "would run"
            partial = " (partial folder would be moved aside)" if folder.exists() else ""
            say(f"{head} would run{partial}: {shlex.join(step.argv)}")
            continue
        elapsed = clock() - began
        reason = _hold_back(step, record, elapsed, budget_s=budget_s, deadline_s=deadline_s)
        if reason:
            outcomes[step.name] = "not run"
            record.update(step.name, status="not run", reason=reason, argv=list(step.argv))
            say(f"{head} not run: {reason}")
            continue

        moved = prior.get("moved_aside", [])
        if folder.exists():  # a crash or a killed call left it: never mix it with a new run
            moved = [*moved, move_aside(folder).name]
            say(f"{head} partial folder moved aside to {moved[-1]}")
        argv = list(step.argv)
        if step.kind == "bench" and budget_s is not None:
            argv += ["--budget-s", f"{max(budget_s - elapsed, 0):.0f}"]
        record.update(step.name, status="running", started_utc=_utc(), argv=list(step.argv),
                      moved_aside=moved, attempts=prior.get("attempts", 0) + 1)
        timeout = None if deadline_s is None else max(deadline_s - elapsed, 1.0)
        start = clock()
        log_path = out_here / "_logs" / f"{step.name}.log"
        code, timed_out = execute([python, *argv], log_path, timeout)
        seconds = clock() - start
        tail = _tail(log_path)
        if code == 0 and is_complete(step, folder):
            if drop_checkpoints and step.kind == "run":
                for name in ("checkpoint.pt", "best.pt"):
                    (folder / name).unlink(missing_ok=True)
            outcomes[step.name] = "done"
            result = summary_of(step, folder)
            record.update(step.name, status="done", seconds=seconds, returncode=0,
                          finished_utc=_utc(), result=result, tail=[])
            say(f"{head} done in {seconds:.1f} s, {result}")
            continue
        # A killed run is retried by a later call; one that exited with an error is not.
        status = "timed out" if timed_out else ("failed" if code else "incomplete")
        if folder.exists():
            moved = [*moved, move_aside(folder).name]
        outcomes[step.name] = status
        record.update(step.name, status=status, seconds=seconds, returncode=code,
                      finished_utc=_utc(), tail=tail, moved_aside=moved)
        last = tail[-1] if tail else "(no output)"
        say(f"{head} {status.upper()} after {seconds:.1f} s (exit {code}): {last}")
    return outcomes


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds wants integers like 0,1,2, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """Parses the command line, runs (or prints) the plan, returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plans", nargs="+", help=f"plan names, run in this order: {', '.join(PLANS)}")
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="study folder")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated (real, sampled plans)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the synthetic runs")
    parser.add_argument("--bind", action="append", default=[],
                        help="a gin binding passed to every run.py run (repeatable)")
    parser.add_argument("--budget-s", type=float, default=None, help="start no new run after this")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="kill a run still going at this many seconds; skip runs known not to fit")
    parser.add_argument("--only", default=None, help="comma-separated name patterns (fnmatch) to keep")
    parser.add_argument("--scaling-presets", default=",".join(SCALING_PRESETS))
    parser.add_argument("--scaling-users", type=int, default=None,
                        help="override the scaling presets' number of users (bench --n-users)")
    parser.add_argument("--done-in", type=Path, action="append", default=[],
                        help="another study folder whose complete runs count as done (repeatable)")
    parser.add_argument("--retry-failed", action="store_true", help="rerun runs that exited non-zero")
    parser.add_argument("--drop-checkpoints", action="store_true",
                        help="delete checkpoint.pt and best.pt of finished runs (published folders omit them)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and each run's state")
    args = parser.parse_args(argv)
    if not args.out.is_absolute():  # the runs start in the repository root
        args.out = Path(os.path.relpath(args.out.resolve(), REPO_ROOT))
    try:
        problem = not args.dry_run and unwritable(REPO_ROOT / args.out)  # absolute stays absolute
        if problem:
            raise StudyError(f"cannot write --out {args.out}: {problem}")
        presets = [p.strip() for p in args.scaling_presets.split(",") if p.strip()]
        steps = build_plan(args.plans, out=args.out, seeds=args.seeds, epochs=args.epochs,
                           binds=args.bind, scaling_presets=presets, scaling_users=args.scaling_users)
        if args.only:
            from fnmatch import fnmatch

            patterns = [p.strip() for p in args.only.split(",") if p.strip()]
            steps = [s for s in steps if any(fnmatch(s.name, p) for p in patterns)]
            if not steps:
                raise StudyError(f"--only {args.only!r} matches no run of the plan")
        for binding in args.bind:
            if "=" not in binding:
                raise StudyError(f"--bind wants 'name = value', got {binding!r}")
        outcomes = run_study(steps, out=args.out, budget_s=args.budget_s, deadline_s=args.deadline_s,
                             retry_failed=args.retry_failed, drop_checkpoints=args.drop_checkpoints,
                             done_in=args.done_in, dry_run=args.dry_run)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    print("study: " + ", ".join(f"{n} {k}" for k, n in counts.items())
          + ("" if args.dry_run else f" (record: {args.out / 'study.json'})"))
    return 0 if set(outcomes.values()) <= {"done", "complete", "would run"} else 1


if __name__ == "__main__":
    sys.exit(main())
