"""An Optuna study whose trials are ordinary run folders: storage, the trial, the worker loop.

- Storage: an SQLAlchemy URL (``sqlite:///<out>/study.db`` by default; PostgreSQL or MySQL for
  workers on several machines). Workers send a heartbeat; a trial whose worker died (``kill
  -9``, a lost node) is marked FAIL once its heartbeat is older than the grace period, and a
  interrupted trial is marked failed and never counted. It is not queued again: Optuna's retry
  queue lets two processes pop the same waiting trial on SQLite (no row locks; seen in the
  kill test), and TPE proposes what it needs anyway.
- A trial trains ``<out>/trials/trial_NNNN`` with the study's gin files, the space's fixed
  bindings and the sampled ones, ``train.test = False`` (the test split is not read during the
  search) and reports validation NDCG@10 after every epoch to the pruner.
- Every trial that ends records ``outcome`` (a user attribute): ``complete``, ``pruned``,
  ``oom`` (out of device memory, with the allocation that failed), ``error``, ``invalid``
  (a setting the space cannot train, with the reason) or ``duplicate`` (a setting an earlier
  counted trial ran: it gets that trial's result without training). The last two cost nothing
  and are not counted.
  The budget counts trials with an outcome other than ``invalid``, so a killed trial, which
  has none, is never counted; ``wall_s`` of counted trials adds up to the GPU-seconds spent.
"""

from __future__ import annotations

import datetime
import gc
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import warnings

import gin
import optuna
from optuna.trial import TrialState

from experiments.tuning.space import Space, as_bindings, invalid_reason

# fail_stale_trials and the heartbeat are marked experimental; they are what makes kill -9 safe.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

MONITOR = "NDCG@10"
COUNTED = ("complete", "pruned", "oom", "error")  # outcomes that spent budget


class TrialOutOfMemory(RuntimeError):
    """The trial's setting did not fit the device memory: a result, not a crash."""


class StudyStopped(RuntimeError):
    """A worker gave up (trials keep failing, or the sampler finds nothing new): one line."""


class TrialFailed(RuntimeError):
    """The trial's run raised (its log.txt says why); the study goes on."""


def storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    """The study database at ``url`` with worker heartbeats (grace: 3 heartbeats)."""
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(
        url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s)


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that spent budget, in trial-number order."""
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("outcome") in COUNTED]


def budget_trials(study: optuna.Study, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    """The first ``n_trials`` counted trials: what every comparison and ``--final`` read, so
    that a study that ran a trial more (K workers starting at once) keeps an equal budget."""
    return counted(study)[:n_trials]


def best_trial(study: optuna.Study, n_trials: int) -> optuna.trial.FrozenTrial | None:
    """The complete trial of the budget with the highest validation NDCG@10 (lowest number on ties)."""
    done = [t for t in budget_trials(study, n_trials) if t.state == TrialState.COMPLETE]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None



def trial_watch(trial, trial_s: float | None, clock=time.monotonic):
    """The ``watch`` callback of one trial's training: after an epoch with a validation it
    reports validation NDCG@10 to the pruner and ends training when the pruner says so or when
    the trial has run longer than ``trial_s`` seconds. Epochs without a validation never end a
    trial (the cap then strikes at the next validation, so a trial overruns its cap by up to
    ``eval_every`` epochs): a trial stopped before its first validation has no result (seen at
    seed scale, where one CE epoch under load outlasted the 150 s cap)."""
    start = clock()

    def watch(row: dict) -> str | None:
        if row["valid"] is None:
            return None
        trial.report(row["valid"][MONITOR], row["epoch"])
        if trial.should_prune():
            return "pruned"
        if trial_s is not None and clock() - start > trial_s:
            return f"time cap ({trial_s:g} s)"
        return None

    return watch

@dataclass
class Trainer:
    """What every trial of one worker shares: the study's gin setup and the loaded data."""

    gin_files: list[str]
    bindings: list[str]
    space: Space
    out: Path
    seed: int
    trial_s: float | None  # a trial stops training after this many seconds (its time cap)
    data: object = field(default=None, repr=False)  # core.dataset_config.Dataset, loaded once

    def parse(self, extra: list[str], *, fixed: bool = True) -> None:
        """The study's gin files, then the space's fixed bindings (``fixed``), the study's own
        bindings (they override the space's), then ``extra``."""
        gin.clear_config()
        first = as_bindings(self.space.fixed) if fixed else []
        gin.parse_config_files_and_bindings(self.gin_files, [*first, *self.bindings, *extra], skip_unknown=False)

    def load_data(self):
        if self.data is None:
            from core.dataset_config import dataset

            self.parse([], fixed=False)
            self.data = dataset()
        return self.data

    def train(self, folder_path: Path, extra: list[str], watch=None, *, fixed: bool = True) -> dict:
        """One run with the study's config plus ``extra`` bindings into ``folder_path``
        (``fixed`` False: without the space's fixed bindings, the study's default config)."""
        from core.dataset_config import dataset
        from core.training import RunFolder
        from core.training.flat import train_configurable

        self.load_data()  # prepared once, by the first run
        self.parse(extra, fixed=fixed)
        data = dataset()  # again under this parse: config.gin records the data settings too
        folder = RunFolder(folder_path, config_text=gin.config_str(), echo=False)
        resume = folder.checkpoint.exists() and not folder.metrics.exists()
        metrics = train_configurable(data=data.data, dataset_name=data.name, out_dir=folder,
                                     data_path=data.source, resume=resume, watch=watch)
        folder.write_config(gin.operative_config_str())
        return metrics

    # --- one trial ---

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # see _fail_unborn
        values = self.space.suggest(trial)
        reason = invalid_reason(values, n_items=self.load_data().data.n_items)
        if reason:
            trial.set_user_attr("outcome", "invalid")
            trial.set_user_attr("reason", reason)
            raise optuna.TrialPruned(reason)
        earlier = _same_setting(trial, values)
        if earlier is not None:  # the sampler proposed a setting already run: answer, don't retrain
            trial.set_user_attr("outcome", "duplicate")
            trial.set_user_attr("reason", f"same setting as trial {earlier.number}")
            if earlier.state == TrialState.COMPLETE:
                return float(earlier.value)
            if earlier.user_attrs.get("outcome") == "oom":
                raise TrialOutOfMemory(f"same setting as trial {earlier.number} (out of memory)")
            raise optuna.TrialPruned(f"same setting as trial {earlier.number}")
        path = self.out / "trials" / f"trial_{trial.number:04d}"
        trial.set_user_attr("run", str(path.relative_to(self.out)))
        start = time.monotonic()
        watch = trial_watch(trial, self.trial_s)
        extra = [*as_bindings(values), "train.test = False", f"train.seed = {self.seed}",
                 "train.show_progress = False"]
        try:
            metrics = self.train(path, extra, watch)
        except Exception as err:  # noqa: BLE001  every failure is a recorded result
            trial.set_user_attr("wall_s", time.monotonic() - start)
            oom = _out_of_memory(err)
            trial.set_user_attr("outcome", "oom" if oom else "error")
            trial.set_user_attr("reason", _first_line(err))
            if oom:
                trial.set_user_attr("oom_request_gib", oom)
                raise TrialOutOfMemory(_first_line(err)) from None
            raise TrialFailed(_first_line(err)) from err
        finally:
            _free_device_memory()
        trial.set_user_attr("wall_s", time.monotonic() - start)
        for key in ("epochs", "best_epoch", "epoch_time_s", "first_epoch_time_s", "peak_memory_gib", "stopped_by"):
            trial.set_user_attr(key, metrics.get(key))
        trial.set_user_attr("valid", metrics["valid"])
        if metrics["stopped_by"] == "pruned":
            trial.set_user_attr("outcome", "pruned")
            raise optuna.TrialPruned(f"pruned at epoch {metrics['epochs']}")
        trial.set_user_attr("outcome", "complete")
        return float(metrics["valid"][MONITOR])


def _same_setting(trial: optuna.Trial, values: dict) -> optuna.trial.FrozenTrial | None:
    """An earlier counted trial of the study with exactly ``values`` (TPE repeats categorical
    settings), or None."""
    for t in trial.study.get_trials(deepcopy=False):
        if t.number != trial.number and t.user_attrs.get("outcome") in COUNTED and t.params == values:
            return t
    return None


def _fail_unborn(study: optuna.Study, grace_s: float) -> None:
    """Marks FAIL the trials whose worker died before its first heartbeat: the heartbeat cannot
    judge a trial that never sent one, and the study would wait for it forever. Such a trial
    either never named its worker (killed within milliseconds of its creation) or names a
    process of this host that no longer runs. Runs after ``fail_stale_trials``, which has by
    then failed every dead trial that did send heartbeats."""
    now, host = datetime.datetime.now(), socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not t.datetime_start or (now - t.datetime_start).total_seconds() <= grace_s:
            continue
        worker = t.user_attrs.get("worker")
        name, _, pid = (worker or "").rpartition(":")
        if worker is None or (name == host and pid.isdigit() and not _alive(int(pid))):
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):  # another worker got there first
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _out_of_memory(err: BaseException) -> float | str | None:
    """For an out-of-memory error (also wrapped, as training wraps it): the GiB the failed
    allocation asked for, or "unknown"; else None."""
    import torch

    chain, seen = [], err
    while seen is not None:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(e) for e in chain)
    if not any(isinstance(e, torch.OutOfMemoryError) for e in chain) and "out of device memory" not in text:
        return None
    match = re.search(r"Tried to allocate ([\d.]+) (GiB|MiB|KiB)", text)
    if not match:
        return "unknown"
    return round(float(match.group(1)) / {"GiB": 1, "MiB": 1024, "KiB": 1024**2}[match.group(2)], 4)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _free_device_memory() -> None:
    """What one trial held goes before the next (its CUDA graphs, the allocator's cache)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the worker loop ------------------------------------------------------------------------


def work(study: optuna.Study, trainer: Trainer, *, n_trials: int, budget_s: float | None,
         heartbeat_s: int, on_trial=None, max_runs: int | None = None) -> tuple[str, bool]:
    """Runs trials until the study holds ``n_trials`` counted trials or ``budget_s`` GPU-seconds
    are spent, or this call ran ``max_runs`` trials; returns why it stopped and whether the
    study wants more trials (True only for ``max_runs``). Safe with other workers on the same study: each checks
    the count before it starts a trial, and waits while trials of (possibly dead) workers are
    still running, until they finish or their heartbeat goes stale. ``on_trial(frozen_trial)``
    hears of every trial this worker ends. Raises StudyStopped when the study's last trials say
    more would be futile (``_futile``)."""
    runs = 0
    while True:
        futile = _futile(study, trainer.out)
        if futile:
            raise StudyStopped(futile)
        optuna.storages.fail_stale_trials(study)  # dead workers' trials: FAIL
        _fail_unborn(study, grace_s=3 * heartbeat_s)
        done = counted(study)
        spent = sum(t.user_attrs.get("wall_s", 0.0) for t in done)
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if len(done) >= n_trials:
            return f"{len(done)} trials done", False
        if budget_s is not None and spent >= budget_s:
            return f"device-seconds budget spent ({spent:.0f} of {budget_s:.0f} s)", False
        if max_runs is not None and runs >= max_runs:
            return f"ran {runs} trial(s)", True
        if len(done) + len(running) >= n_trials:
            time.sleep(heartbeat_s)  # the last trials run elsewhere: wait for them (or their death)
            continue
        mine: list[optuna.trial.FrozenTrial] = []
        study.optimize(trainer, n_trials=1, catch=(TrialOutOfMemory, TrialFailed), gc_after_trial=False,
                       callbacks=[lambda _, trial: mine.append(trial)])
        if on_trial is not None:
            on_trial(mine[0])
        runs += 1


def _futile(study: optuna.Study, out: Path, errors: int = 3, skipped: int = 100) -> str | None:
    """Why running more trials is futile, judged on the study's last ended trials (whatever
    process ran them: each trial has its own): ``errors`` failures in a row (a broken config
    or environment), or ``skipped`` invalid or repeated settings in a row (a space with nothing
    new in it). None otherwise."""
    ended = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("outcome") is not None]
    outcomes = [t.user_attrs["outcome"] for t in ended]
    if len(outcomes) >= errors and set(outcomes[-errors:]) == {"error"}:
        last = ended[-1].user_attrs
        return f"{errors} trials in a row failed; the last: {last.get('reason')} (see {out / str(last.get('run'))}/log.txt)"
    if len(outcomes) >= skipped and set(outcomes[-skipped:]) <= {"invalid", "duplicate"}:
        return (f"{skipped} sampled settings in a row were invalid or already run: widen or fix the search "
                f"space (the last: {ended[-1].user_attrs.get('reason')})")
    return None
