"""A run folder: what one training run leaves behind, and the rules that keep it true.

    log.txt        the run's log (every process that worked on it, appended), and why it ended
    config.gin     the operative gin config (experiments/run.py), written only after the checks
    history.jsonl  one record per epoch, rewritten whole with every checkpoint
    checkpoint.pt  the last finished epoch: model, optimizer, RNG, early-stopping state
    best.pt        the model of the best validation epoch
    metrics.json   the final result
    .lock          pid and host of the process writing the folder (an advisory flock)

Both checkpoints carry ``settings`` (what the run trained with: data, model class and its
constructor arguments, batch size, max_len, optimizer, loss and its settings, seed, ...) and
``model_settings`` (class + kwargs), so ``load_run`` rebuilds the model without gin and
``--resume`` refuses any change the resumed state would silently ignore or that breaks the
checkpoint, naming the setting, before anything is written. Settings a resume may change:
epochs, patience, eval_every, nan_check_every, show_progress, device and the evaluation batch
size (they are not in ``settings``), and the number of ranks of a catalog-parallel run
(``_resharded``: the one recorded setting that may change).

What the folder refuses, in one line each (``RunFolderError``), before writing anything:
- a fresh run into a folder that holds one: checkpoint.pt, best.pt, history.jsonl or
  metrics.json there (a finished run whose checkpoint.pt was deleted is still a run);
- a ``--resume`` that changes a setting, or whose checkpoint.pt or best.pt fails its digest
  (``CorruptCheckpoint``: ``core.checkpoint`` seals every checkpoint with a SHA-256 digest);
- a ``--resume`` that would train no epoch (the run early-stopped, or ``train.epochs`` is not
  above the epochs done) of a finished run (``NothingToTrain``): nothing in the folder changes,
  log.txt included. Without metrics.json (the run ended between its last checkpoint and its
  test) such a resume runs the test and writes metrics.json, but leaves config.gin as it was.
A file that cannot be written later (a full disk) ends the run with ``WriteFailed`` naming it
and the epoch checkpoint.pt still holds; a SIGTERM (``RunStopped``, experiments/run.py) ends it
with a line in log.txt saying so and where. Either way ``--resume`` continues from there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from core import checkpoint as ckpt
from core.atomic import _pid_alive, unwritable
from core.integrity import CorruptFile
from core.training.errors import (NothingToTrain, RunFolderBusy, RunFolderError, RunStopped, WriteFailed,
                                  corrupt_checkpoint)

log = logging.getLogger(__name__)

LOCK = ".lock"
# What to do about a corrupted checkpoint (the end of its one error line).
CHECKPOINT_FIX = ("--resume cannot continue this run: train it again into another --out (its best.pt, if "
                  "intact, still serves recommend.py and load_run)")
BEST_FIX = ("the best model is lost (checkpoint.pt holds the last epoch, not the best one): train the run "
            "again into another --out")


class RunFolder:
    """The files of one run (see the module docstring); ``open`` is the way in."""

    def __init__(self, path: str | Path, *, config_text: str | None = None, echo: bool = True):
        self.path = Path(path)
        self.echo = echo  # False: the log goes to log.txt only (tuning trials side by side)
        self.config_text = config_text  # written as config.gin once the checks have passed
        self.log = self.path / "log.txt"
        self.config = self.path / "config.gin"
        self.history = self.path / "history.jsonl"
        self.checkpoint = self.path / "checkpoint.pt"
        self.best = self.path / "best.pt"
        self.metrics = self.path / "metrics.json"
        self._notes: list[str] = []  # warnings from before log.txt exists
        self.writer = True  # False on data-parallel ranks other than 0: ``open`` sets it
        self.saved_epoch = 0  # the epoch checkpoint.pt holds (``open`` and ``save_checkpoint`` set it)
        self.stage = "the start"  # where the run is, for a stop's log line (``fit`` sets it)
        self.keep_config = False  # a resume that trains no epoch leaves config.gin as it was

    # --- before anything is written ---

    def precheck(self, *, resume: bool) -> None:
        """Refuses, without writing, a path that cannot become a run folder, a fresh run over
        an existing one, and a resume without a checkpoint. Cheap: run.py calls it before
        loading data; ``open`` calls it again under the lock."""
        problem = unwritable(self.path)
        if problem:
            raise RunFolderError(f"cannot make run folder {self.path}: {problem}")
        if resume and not self.has_checkpoint():
            owner = self._live_owner()
            if owner:  # a run still in its first epoch: say so, not "no checkpoint"
                raise RunFolderBusy(f"{self.path} is in use by {owner}: another run is writing it "
                                    "(no checkpoint yet); wait for it to end or choose another --out")
            raise RunFolderError(f"--resume: no checkpoint at {self.checkpoint}")
        if not resume and self.has_checkpoint():
            raise RunFolderError(f"{self.path} already holds a run; pass --resume to continue it "
                                 "or choose another --out")
        results = [p.name for p in (self.metrics, self.best, self.history) if p.exists()]
        if not resume and results:
            raise RunFolderError(f"{self.path} already holds a run ({', '.join(results)}) with no checkpoint.pt "
                                 "to resume; choose another --out (or delete the folder to start over)")

    def check_resume(self, settings: dict) -> dict:
        """The checkpoint to resume, if it was written with ``settings``; else one line naming
        the first setting that differs."""
        state = _read(self.checkpoint, "cpu", CHECKPOINT_FIX)  # RNG states stay on the CPU
        best = ckpt.latest(self.best)
        if best is not None:  # checked now, not after the epochs that the test would follow
            with corrupt_checkpoint():  # (a sharded best.pt: its seal and sizes here, its digests when it is read)
                ckpt.check_sharded(best, fix=BEST_FIX, part=None) if ckpt.is_sharded(best) else \
                    ckpt.check_torch(best, fix=BEST_FIX)
        saved = state.get("settings")
        if saved is None:
            raise RunFolderError(f"--resume: {self.checkpoint} predates recorded settings and "
                                 "cannot be checked; start a new run")
        may_change = _resharded(state, saved, settings)
        for key in [*settings, *(k for k in saved if k not in settings)]:  # data, model, loss, ...
            old, new = saved.get(key, "(unset)"), settings.get(key, "(unset)")
            if old != new and key not in may_change:
                raise RunFolderError(
                    f"--resume: {key} is {new!r} here but the run trained with {old!r}; a resumed "
                    "run keeps its own settings (drop the binding, or start a new run elsewhere)")
        return state

    def check_work(self, state: dict, epochs: int | None) -> None:
        """Refuses (``NothingToTrain``) a resume of a finished run that would train no epoch;
        one without metrics.json goes on to its test but keeps its config.gin."""
        self.saved_epoch = done = state["epoch"]
        stopped = state.get("stopped_by") or ("early stop" if state.get("stopped") else None)
        if epochs is None or (not stopped and epochs > done):
            return
        self.keep_config = True
        if not self.metrics.exists():
            return
        why = (f"the run ended at epoch {done} ({stopped}) and a resume does not restart it" if stopped else
               f"checkpoint.pt holds epoch {done} and train.epochs = {epochs}; raise train.epochs to train more")
        raise NothingToTrain(f"--resume: nothing to train: {why}; {self.path} is unchanged")

    # --- the session ---

    @contextlib.contextmanager
    def open(self, *, resume: bool, settings: dict, writer: bool = True,
             epochs: int | None = None) -> Iterator[dict | None]:
        """Takes the lock, checks (``precheck``, ``check_resume``), writes config.gin and sends
        the ``core`` loggers to log.txt; yields the checkpoint to resume (None for a fresh run).

        A refused or failed start leaves nothing behind: a folder this call created is removed
        again unless a checkpoint exists by then. An error inside the block is written to
        log.txt as why the run ended. ``epochs``: ``train.epochs``, for ``check_work``.
        ``writer`` False (a data-parallel rank other than 0): no lock, no files, the checks only.
        """
        self.writer = writer
        if not writer:
            self.precheck(resume=resume)
            state = self.check_resume(settings) if resume else None
            if state is not None:
                self.check_work(state, epochs)
            yield state
            return
        self.precheck(resume=resume)
        created = self._make()
        lock = None
        try:
            lock = self._lock()
            self.precheck(resume=resume)  # again: another process may have written meanwhile
            state = self.check_resume(settings) if resume else None
            if state is not None:
                self.check_work(state, epochs)
            if self.config_text is not None:
                self.write_config(self.config_text)
            with self._logging():
                for note in self._notes:
                    log.warning(note)
                yield state
        except RunFolderBusy:
            raise  # the folder is another run's
        except (RunFolderError, ValueError, TypeError, AssertionError):
            # A refused start or a bad setting leaves nothing; a run that failed later (a
            # TrainingError) keeps its folder, whose log.txt says why it ended.
            if not self.has_checkpoint():
                for folder in created:  # deepest first
                    if folder == self.path:
                        shutil.rmtree(folder, ignore_errors=True)
                    else:
                        _rmdir(folder)
            raise
        finally:
            if lock is not None:
                self._unlock(lock)

    def _make(self) -> list[Path]:
        """Creates the folder; returns the directories this call created, deepest first."""
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.mkdir()
        except FileExistsError:
            if not self.path.is_dir():
                raise RunFolderError(f"cannot make run folder {self.path}: it is a file") from None
            return [p for p in missing if p != self.path]  # another process made it just now
        except OSError as err:
            raise RunFolderError(f"cannot make run folder {self.path}: {err.strerror or err}") from None
        return missing

    def _live_owner(self) -> str | None:
        """"pid P on HOST" when the lock file names a live process of this host, else None."""
        try:
            owner = (self.path / LOCK).read_text().split()
        except OSError:
            return None
        if len(owner) == 2 and owner[0].isdigit() and owner[1] == socket.gethostname() \
                and int(owner[0]) != os.getpid() and _pid_alive(int(owner[0])):
            return f"pid {owner[0]} on {owner[1]}"
        return None

    def _lock(self):
        """An exclusive flock on ``.lock``, which then holds "pid host". A lock file naming a
        dead process of this host is stale: taken over, with a warning in log.txt."""
        me = socket.gethostname()
        f = open(self.path / LOCK, "a+")
        f.seek(0)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except OSError as err:
            held = False
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                owner = " ".join(f.read().split()) or "unknown"
                f.close()
                raise RunFolderBusy(f"{self.path} is in use (pid, host: {owner}): another run is "
                                    "writing it; wait for it to end or choose another --out") from None
            self._notes.append(f"no flock on this file system ({err.strerror}): relying on {LOCK}")
        owner = f.read().split()
        pid, host = (int(owner[0]), owner[1]) if len(owner) == 2 and owner[0].isdigit() else (None, None)
        if not held and host == me and pid != os.getpid() and _pid_alive(pid):
            f.close()
            raise RunFolderBusy(f"{self.path} is in use by pid {pid} on {host}: another run is "
                                "writing it; wait for it to end or choose another --out")
        if pid is not None and pid != os.getpid():
            self._notes.append(f"took over the stale lock of pid {pid} on {host} (that run ended "
                               f"without releasing {self.path / LOCK})")
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} {me}\n")
        f.flush()
        return f

    @staticmethod
    def _unlock(f) -> None:
        f.seek(0)
        f.truncate()  # an empty lock file: the folder is free, nothing stale to report
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()

    @contextlib.contextmanager
    def _logging(self):
        """The ``core`` loggers go to log.txt (appended) and stderr (``echo``) while the run lasts; an
        exception is recorded in log.txt only (the caller prints its own one-line error)."""
        logger = logging.getLogger("core")
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
        to_file = _LogFile(self.log)
        handlers = (to_file, logging.StreamHandler(sys.stderr)) if self.echo else (to_file,)
        for handler in handlers:
            handler.setFormatter(fmt)
            logger.addHandler(handler)
        old_level, old_propagate = logger.level, logger.propagate
        logger.setLevel(logging.INFO)
        logger.propagate = False  # a root handler (gin's logging.error adds one) would say it twice
        try:
            yield
        except BaseException as err:
            if isinstance(err, RunStopped) and not err.placed:  # say where, in log.txt and the error line
                err.args, err.placed = (f"stopped by {err.signal_name} in {self.stage}; {self.kept()}",), True
            message = " ".join(str(err).split()) or type(err).__name__
            to_file.handle(logger.makeRecord("core.training", logging.ERROR, __file__, 0,
                                             "run ended: %s: %s", (type(err).__name__, message), None))
            raise
        finally:
            logger.setLevel(old_level)
            logger.propagate = old_propagate
            for handler in handlers:
                logger.removeHandler(handler)
                handler.close()

    # --- what a run writes ---

    def kept(self) -> str:
        """What the folder holds after a failure, and how to go on (the end of its line)."""
        if self.saved_epoch:
            return f"{self.checkpoint} holds epoch {self.saved_epoch} whole: --resume continues the run"
        return "no epoch was saved: start the run again into a new --out"

    def _write(self, path: Path, write, *args) -> None:
        """``write(*args, path)`` on rank 0; an OSError (a full disk) as one ``WriteFailed`` line.
        Writes are atomic (``core.atomic``): the old file stays whole."""
        if not self.writer:
            return
        try:
            write(*args, path)
        except OSError as err:
            raise WriteFailed(f"cannot write {path}: {err.strerror or err}; {self.kept()}") from None

    def write_config(self, text: str) -> None:
        """config.gin: the config that ran (run.py rewrites it with every default at the end);
        left as it was by a resume that trains no epoch (``check_work``)."""
        if not self.keep_config:
            self._write(self.config, ckpt.write_text, text)

    def has_checkpoint(self) -> bool:
        """A whole checkpoint.pt is there (a file, or a sealed sharded folder: ``core.checkpoint.latest``)."""
        return ckpt.latest(self.checkpoint) is not None

    def _save(self, path: Path, state) -> None:
        """A sealed file written by rank 0, or a sharded checkpoint (``Ranks.checkpoint``)
        written by every rank together; either way the old one stays whole until the new one is."""
        if not hasattr(state, "save"):
            self._write(path, ckpt.save_torch, state)
            return
        try:
            state.save(path)
        except OSError as err:
            raise WriteFailed(f"cannot write {path}: {err.strerror or err}; {self.kept()}") from None

    def save_checkpoint(self, state) -> None:
        self._save(self.checkpoint, state)
        self.saved_epoch = state["epoch"]

    def save_best(self, state) -> None:
        self._save(self.best, state)

    def read_best(self, device: torch.device | str = "cpu") -> dict:
        """best.pt's state: the dicts of a sealed file, or a sharded folder's state (its tensors
        are read by ``Ranks.restore``)."""
        return _read(self.best, device, BEST_FIX)

    def write_history(self, history: list[dict]) -> None:
        """history.jsonl, rewritten whole so that it always matches checkpoint.pt after a resume."""
        self._write(self.history, ckpt.write_text, "".join(json.dumps(r) + "\n" for r in history))

    def write_metrics(self, metrics: dict) -> None:
        self._write(self.metrics, ckpt.write_json, metrics)


class _LogFile(logging.FileHandler):
    """log.txt's handler: a line that cannot be written (a full disk) is lost quietly, instead of
    a logging traceback on stderr; the run's own error line still says what happened."""

    def handleError(self, record: logging.LogRecord) -> None:  # logging's own name
        if not isinstance(sys.exc_info()[1], OSError):  # a bad format string is still reported
            super().handleError(record)


def _read(path: Path, device, fix: str) -> dict:
    """A checkpoint's state: ``core.checkpoint.load_torch``'s dict for a file; for a sharded
    folder (the sealed one ``core.checkpoint.latest`` picks) ``sharded_state`` (its ``state.pt``,
    the folder under ``SHARDED_PATH``). A failed digest or seal: ``CorruptCheckpoint``."""
    whole = ckpt.latest(path)
    with corrupt_checkpoint():
        if whole is None and Path(path).is_dir():
            raise CorruptFile(path, "no seal (its save did not finish)", fix)
        if whole is None or not ckpt.is_sharded(whole):
            return ckpt.load_torch(path, map_location=device, fix=fix)
        return ckpt.sharded_state(whole, fix=fix)


def _resharded(state: dict, saved: dict, settings: dict) -> set[str]:
    """The recorded settings a resume may change although they are in ``settings``: the number
    of ranks of a catalog-parallel run resumed catalog-parallel from a sharded checkpoint
    (DCP reshards it for any K >= 2; every rank then goes on from rank 0's RNG state,
    ``Ranks.own_rng_state``). Empty otherwise: a data-parallel resume keeps K (its RNG states)."""
    if ckpt.SHARDED_PATH in state and saved.get("train.catalog_parallel") is True \
            and settings.get("train.catalog_parallel") is True:
        return {"parallel.world_size"}
    return set()


def _rmdir(folder: Path) -> None:
    """Removes ``folder`` if it is empty (a parent this run created and nothing else uses)."""
    with contextlib.suppress(OSError):
        folder.rmdir()


# --- the settings a checkpoint records --------------------------------------------------------


def model_settings(model: torch.nn.Module) -> dict:
    """{"class": import path, "kwargs": constructor arguments}: enough to rebuild the model.

    The kwargs come from the model's own ``settings`` dict (SASRec keeps one); a model without
    it records only ``n_items`` and ``max_len`` and cannot be rebuilt by ``load_run``.
    """
    cls = type(model)
    kwargs = dict(getattr(model, "settings", None) or
                  {"n_items": getattr(model, "n_items", None), "max_len": getattr(model, "max_len", None)})
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "kwargs": kwargs}


def build_model(settings: dict) -> torch.nn.Module:
    """The model ``model_settings`` describes, freshly initialised."""
    module, _, name = settings["class"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**settings["kwargs"])


@dataclass
class Run:
    """A trained run, loaded: the best model (eval mode), the data it trained on, its results."""

    path: Path
    model: torch.nn.Module
    data: object  # core.data.shards.SequenceData
    metrics: dict | None  # None while the run has not finished
    settings: dict


def load_run(run_dir: str | Path, *, device: str | torch.device = "auto", ctx=None) -> Run:
    """Rebuilds a run's best model (best.pt's weights, no gin needed) and loads its data.

    The data comes from the shard folder the run recorded (relative paths are tried from the
    working directory, then from the repository root). Raises RunFolderError in one line;
    ``CorruptCheckpoint`` (one) when best.pt fails its digest, before anything is unpickled.

    A catalog-parallel run's best.pt is sharded (a DCP folder). In one process the whole
    table is read from its shards (the model holds it: loading one process is the user's
    choice). ``ctx``: a ``core.parallel.collectives.DistContext`` of K ranks (under torchrun,
    every rank calls ``load_run`` together): each rank then builds and reads only its rows of
    the table (``ShardedItemEmbedding``: ``item_embeddings`` gives this rank's items, and the
    model's forward is a collective), whatever K wrote it.
    """
    from core.data.shards import load_sequences
    from core.dataset_config import resolve_path
    from core.env import usable_device

    folder = RunFolder(run_dir)
    if not folder.best.exists():
        raise RunFolderError(f"{folder.path}: no best.pt (not a run folder, or no validation ran yet)")
    state = folder.read_best("cpu")
    if "model_settings" not in state:
        raise RunFolderError(f"{folder.best} predates checkpoints that carry the model's settings; "
                             "train the run again to use it")
    sharded = ckpt.SHARDED_PATH in state
    if sharded and ctx is not None and ctx.enabled:
        from core.training.ranks import Ranks

        ranks = Ranks(ctx, catalog_parallel=True)
        spec = state["model_settings"]
        module, _, name = spec["class"].rpartition(".")
        model = ranks.build_model(getattr(importlib.import_module(module), name), **spec["kwargs"])
        model.to(ctx.device)
        ranks.restore(model, None, state, BEST_FIX)
        model.eval()
    else:
        model = build_model(state["model_settings"])
        if sharded:
            from core.training.ranks import load_sharded_into

            with corrupt_checkpoint():
                ckpt.check_shards(state, fix=BEST_FIX)
            load_sharded_into(model, None, state)
        else:
            model.load_state_dict(state["model"])
        model.to(usable_device(str(device), "device")).eval()
    if not state.get("data_path"):
        raise RunFolderError(f"{folder.path}: the run did not record where its data is")
    data = load_sequences(resolve_path(state["data_path"]))
    if (data.n_users, data.n_items) != (state["settings"]["data.n_users"], state["settings"]["data.n_items"]):
        raise RunFolderError(f"{state['data_path']}: {data.n_users} users, {data.n_items} items now, "
                             "not what the run trained on")
    metrics = None
    if folder.metrics.exists():
        metrics = json.loads(folder.metrics.read_text())
    return Run(folder.path, model, data, metrics, state["settings"])
