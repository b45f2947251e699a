"""Training: ``train`` (the settings users bind, ``train.epochs`` and friends) groups its
keywords, builds the run (``build``: the same code the epoch benchmark times) and hands it to
``fit``, the epoch loop.

Protocol (DESIGN.md "Training", "Evaluation", "Measurement"), identical for every loss:
- batches are built on the device (``TrainBatches``), each with its scored positions counted
  on the host, so the step gathers the compact (N, D) block without a device->host sync;
- the step (``core.training.step``): forward, ``loss_fn(e, model.catalog(), targets - 1)``,
  backward, Adam; bf16 autocast on CUDA, fp32 on the CPU;
- validation every ``eval_every`` epochs, early stopping on validation NDCG@k, test with the
  best checkpoint, the popularity baseline on the same test split and masking;
- epoch time with the GPU synchronized and evaluation excluded; peak memory of training.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gin
import numpy as np
import torch
from tqdm import tqdm

from core import checkpoint as ckpt
from core.data.batching import DeviceSequences, TrainBatches
from core.data.shards import SequenceData
from core.env import environment, resolve_device
from core.evaluation import count_train_users, default_eval_batch_size, evaluate_model, evaluate_popularity
from core.losses import bind_to_data, ce, loss_facts, loss_name, loss_settings
from core.losses.registry import _unwrap
from core.model import SASRec
from core.parallel.collectives import DistContext
from core.training.errors import TrainingDiverged, TrainingError
from core.training.ranks import Ranks
from core.training.run_folder import RunFolder, model_settings
from core.training.step import GraphCaptureError, Step, StepSettings, make_step, run_epoch

log = logging.getLogger(__name__)

_GIB = 2**30


# --- settings, grouped ----------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """How long and how watched a run trains: what a ``--resume`` may change."""

    epochs: int = 200
    patience: int = 10  # evaluations without a new best validation NDCG@ks[0] before stopping
    eval_every: int = 1  # validate every this many epochs (and after the last one)
    nan_check_every: int = 0  # also check the loss every this many steps (one sync); 0: per epoch
    show_progress: bool | None = None  # None: a progress bar only when stderr is a terminal


@dataclass(frozen=True)
class Evaluation:
    """Full-catalog ranking of one split, for the model and for the popularity baseline."""

    ks: tuple[int, ...]
    mask_history: bool
    batch_size: int
    max_len: int
    item_user_counts: np.ndarray
    n_train_users: int
    ranks: Ranks = field(default_factory=Ranks)  # K ranks: each ranks a share, reduced exactly

    def _args(self, seqs: DeviceSequences) -> dict:
        return dict(batch_size=self.batch_size, max_len=self.max_len, mask_history=self.mask_history,
                    ks=self.ks, item_user_counts=self.item_user_counts, n_train_users=self.n_train_users,
                    **self.ranks.eval_args(seqs.n_users, self.batch_size))

    def model(self, model: torch.nn.Module, seqs: DeviceSequences, split: str, amp: bool) -> dict:
        with self.ranks.evaluating(model):
            return evaluate_model(model, model, seqs, split=split, amp=amp, **self._args(seqs))

    def popularity(self, seqs: DeviceSequences, split: str) -> dict:
        return evaluate_popularity(seqs, split=split, **self._args(seqs))


@dataclass
class Built:
    """What a run trains, built from its settings: ``build``'s result."""

    model: torch.nn.Module
    step: Step
    batches: TrainBatches
    seqs: DeviceSequences
    device: torch.device
    amp: bool  # bf16 autocast in effect (CUDA only)


def build(data: SequenceData, *, model_fn: Callable[..., torch.nn.Module], loss_fn: Callable,
          batch_size: int, max_len: int, lr: float, weight_decay: float, seed: int,
          device: torch.device, step: StepSettings, ranks: Ranks | None = None) -> Built:
    """Seeds every RNG, puts the data on ``device``, builds the model, its step and the batches.

    ``model_fn`` is called with ``n_items`` and ``max_len`` (passed from here so that batches
    and positions can never disagree); ``loss_fn`` is bound to the data first (``bind_to_data``).
    ``ranks``: the processes of a torchrun run (``core.training.ranks.Ranks``); the step
    then trains their DDP (and catalog-parallel) view of the model.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    seqs = DeviceSequences.from_data(data, device)
    ranks = ranks or Ranks()
    model = ranks.shard(model_fn(n_items=data.n_items, max_len=max_len)).to(device)
    train_step = make_step(ranks.prepare(model), ranks.loss(bind_to_data(loss_fn, data)), lr=lr,
                           weight_decay=weight_decay, settings=step, batch_size=batch_size, max_len=max_len)
    ranks.attach(train_step.optimizer)
    batches = TrainBatches(seqs, batch_size=batch_size, max_len=max_len, seed=seed)
    return Built(model, train_step, batches, seqs, device, step.amp and device.type == "cuda")


# --- train: the settings users bind -------------------------------------------------------------


def train(
    *,
    data: SequenceData,
    out_dir: str | Path | RunFolder,
    dataset_name: str | None = None,
    data_path: str | Path | None = None,
    model_fn: Callable[..., torch.nn.Module] = SASRec,
    loss_fn: Callable = ce,
    epochs: int = 200,
    batch_size: int = 256,
    max_len: int = 50,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    patience: int = 10,
    eval_every: int = 1,
    mask_history: bool = True,
    ks: Sequence[int] = (10,),
    seed: int = 0,
    device: str = "auto",
    amp: bool = True,
    eval_batch_size: int | None = None,
    resume: bool = False,
    compile: bool | str = False,
    cuda_graph: bool = False,
    show_progress: bool | None = None,
    nan_check_every: int = 0,
    catalog_parallel: bool = False,
    parallel: DistContext | None = None,
    test: bool = True,
    watch: Callable[[dict], str | None] | None = None,
) -> dict:
    """Trains ``model_fn(n_items=..., max_len=max_len)`` with ``loss_fn``; returns metrics.json's dict.

    ``data`` is a SequenceData (leave-one-out split inside); ``out_dir`` the run folder;
    ``dataset_name`` / ``data_path`` are recorded (``load_run`` reloads the data from the path).
    ``loss_fn(e (N, D), c (V, D), targets (N,)) -> scalar``; its name in metrics.json is
    ``core.losses.loss_name(loss_fn)``. ``compile``: torch.compile the model body (True or a
    mode); ``cuda_graph``: the whole step as CUDA graphs (see ``StepSettings``). ``resume``:
    continue from checkpoint.pt (the result equals an uninterrupted run's, bit for bit on the
    CPU); only the ``Schedule``'s settings, ``device`` and ``eval_batch_size`` may change.
    Every bad value raises ValueError naming its ``train.*`` setting before anything is written.

    ``parallel``: this process's place in a torchrun run (``core.parallel.collectives.init_from_env``;
    None: one process). Each rank trains its share of every global batch of ``batch_size`` rows
    (the learning rate is not rescaled) and ranks its share of the users; rank 0 writes the run
    folder; the device is the rank's own. ``catalog_parallel``: the item table split by item
    range over the ranks (exact softmax CE: ``ce`` or ``cce_exact``); nothing changes on one.

    ``test``: False leaves the test split unread (a tuning trial: its objective is validation
    only, ``experiments/tune.py``); metrics.json's ``test`` and ``popularity_test`` are then null.
    ``watch(row)``: called after every epoch with its history row (a trial's pruner and time
    cap); a string it returns ends training there, as that reason (``stopped_by`` in
    metrics.json), and the best checkpoint so far is what the run keeps.

    Raises:
        TrainingDiverged: NaN/inf training loss (checkpoint.pt keeps the last good epoch).
        RunFolderError: the folder refuses (an existing run, a changed resume, a bad path).
        TrainingError: out of device memory, a step that cannot be captured.
    """
    _check_values(epochs=epochs, batch_size=batch_size, max_len=max_len, lr=lr,
                  weight_decay=weight_decay, patience=patience, eval_every=eval_every, ks=ks,
                  seed=seed, eval_batch_size=eval_batch_size, nan_check_every=nan_check_every,
                  n_items=data.n_items)
    ks = tuple(int(k) for k in ks)
    schedule = Schedule(epochs, patience, eval_every, nan_check_every, show_progress)
    ranks = Ranks(parallel, catalog_parallel=catalog_parallel)
    _check_ranks(ranks, compile=compile, cuda_graph=cuda_graph, loss=loss_name(loss_fn))
    dev = ranks.device if ranks.enabled else _device(device)
    run = build(data, model_fn=model_fn, loss_fn=loss_fn, batch_size=batch_size, max_len=max_len,
                lr=lr, weight_decay=weight_decay, seed=seed, device=dev,
                step=StepSettings(amp=amp, compile=compile, cuda_graph=cuda_graph), ranks=ranks)
    evaluation = Evaluation(ks, mask_history, eval_batch_size or default_eval_batch_size(data.n_items),
                            max_len, data.train_item_user_counts(), count_train_users(data), ranks)
    name = dataset_name or data.attrs.get("name", "data")
    settings = {  # what a resume must not change: checked against the checkpoint's
        "data.name": name, "data.n_users": int(data.n_users), "data.n_items": int(data.n_items),
        "data.n_interactions": int(len(data.items)), "data.checksum": _checksum(data),
        **_model_and_loss_settings(run.model, loss_fn),
        **{f"train.{k}": v for k, v in dict(
            batch_size=batch_size, max_len=max_len, lr=lr, weight_decay=weight_decay, seed=seed,
            amp=amp, compile=compile, cuda_graph=cuda_graph, mask_history=mask_history, ks=ks).items()},
        **ranks.settings(),
    }
    folder = out_dir if isinstance(out_dir, RunFolder) else RunFolder(out_dir)
    record = {"name": name, "data_path": str(data_path) if data_path is not None else data.attrs.get("path"),
              "loss": loss_name(loss_fn), "loss_settings": _jsonable(loss_settings(loss_fn)),
              "settings": settings, "model_settings": model_settings(run.model), "seed": seed,
              # metrics.json's "settings": the same facts grouped, for reports (experiments/report.py)
              "settings_by_group": {
                  "model": {"class": model_settings(run.model)["class"],
                            **_jsonable(model_settings(run.model)["kwargs"])},
                  "loss": {"name": loss_name(loss_fn), **_jsonable(loss_settings(loss_fn))},
                  "optimizer": {"lr": float(lr), "weight_decay": float(weight_decay),
                                "batch_size": int(batch_size)},  # plain numbers: numpy's are not JSON
                  "schedule": {"epochs": int(epochs), "patience": int(patience),
                               "eval_every": int(eval_every), "nan_check_every": int(nan_check_every)},
                  "evaluation": {"ks": list(ks), "mask_history": mask_history},
                  "step": {"amp": amp, "compile": compile, "cuda_graph": cuda_graph},
                  "data": {k.removeprefix("data."): v for k, v in settings.items() if k.startswith("data.")},
                  "parallel": {"world_size": settings.get("parallel.world_size", 1),
                               "catalog_parallel": settings.get("train.catalog_parallel", False)},
                  "seed": int(seed)},
              # rows the preparation dropped as exact duplicates (stats.json has them too)
              "duplicates": data.attrs.get("duplicates")}
    return fit(run, folder, schedule=schedule, evaluation=evaluation, record=record,
               resume=resume, parallel=ranks, test=test, watch=watch)


# ``train`` as gin's configurable "train" (what gin files bind: train.epochs, train.loss_fn, ...),
# for experiments/run.py and the epoch benchmark. A wrapped copy: ``train`` itself stays plain.
train_configurable = gin.external_configurable(train, name="train")


# --- fit: the epoch loop ----------------------------------------------------------------------


def fit(run: Built, folder: RunFolder, *, schedule: Schedule, evaluation: Evaluation, record: dict,
        resume: bool, parallel: Ranks, test: bool = True,
        watch: Callable[[dict], str | None] | None = None) -> dict:
    """Trains ``run`` epoch by epoch into ``folder``: validation, early stopping, checkpoints,
    then the test of the best model; returns (and writes) metrics.json's dict.

    ``record``: what the checkpoints and metrics.json record about the run (``train`` makes it);
    ``test`` and ``watch``: see ``train``.
    """
    model, step, batches, dev = run.model, run.step, run.batches, run.device
    monitor, loss = f"NDCG@{evaluation.ks[0]}", record["loss"]
    history, best, bad_evals, stopped, start_epoch = [], {"metric": -math.inf, "epoch": 0, "valid": None}, 0, False, 1
    stopped_by = None  # why training ended before its last epoch: "early stop" or what ``watch`` said
    saved = {"settings": record["settings"], "model_settings": record["model_settings"],
             "data_path": record["data_path"]}
    with folder.open(resume=resume, settings=record["settings"], writer=parallel.writer) as state:
        if state is not None:
            model.load_state_dict(state["model"])
            step.optimizer.load_state_dict(state["optimizer"])
            ckpt.set_rng_state(parallel.own_rng_state(state["rng"]))
            history, best, bad_evals, stopped = state["history"], state["best"], state["bad_evals"], state["stopped"]
            stopped_by = state.get("stopped_by", "early stop" if stopped else None)
            start_epoch = state["epoch"] + 1
            log.info("resumed %s at epoch %d (best %s %.4f at epoch %d)", folder.path, state["epoch"],
                     monitor, best["metric"], best["epoch"])
        data = record["settings"]
        if step.warning:
            log.warning(step.warning)
        log.info("%s: %d users, %d items, %d interactions; %s loss on %s (%s step); %d steps/epoch, "
                 "%d scored positions/epoch", record["name"], data["data.n_users"], data["data.n_items"],
                 data["data.n_interactions"], loss, dev, step.kind, len(batches), batches.positions_per_epoch)
        if record.get("duplicates"):
            dup = record["duplicates"]
            log.info("data: %d exact duplicate (user, item, time) rows %s when it was prepared",
                     dup.get("rows", 0), "dropped" if dup.get("dropped", True) else "kept")

        for epoch in range(start_epoch, schedule.epochs + 1):
            if stopped:
                break
            # --- train one epoch (synchronized wall time, evaluation excluded) ---
            progress = tqdm(total=batches.sequences_per_epoch, desc=f"epoch {epoch}", unit="seq",
                            unit_scale=True, leave=False, file=sys.stderr,
                            disable=None if schedule.show_progress is None else not schedule.show_progress)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)  # training peak, evaluation excluded
            _sync(dev)
            start = time.perf_counter()
            try:
                train_loss, steps = run_epoch(step, parallel.batches(batches.epoch(epoch)), device=dev,
                                              nan_check_every=schedule.nan_check_every, progress=progress)
            except torch.OutOfMemoryError as err:
                # Expected for CE on huge catalogs (the (N, V) logits): a result, not a crash.
                raise TrainingError(f"out of device memory in epoch {epoch} ({loss}, {data['data.n_items']} "
                                    f"items, batch {data['train.batch_size']}): {str(err).splitlines()[0]}") from err
            except GraphCaptureError as err:  # a setting that cannot work: one line, no traceback
                raise TrainingError(str(err)) from err
            finally:
                progress.close()
            _sync(dev)
            seconds = time.perf_counter() - start
            train_loss = parallel.mean(train_loss)
            if not math.isfinite(train_loss):
                raise TrainingDiverged(_diverged(folder, epoch, train_loss, steps))
            positions = batches.positions_per_epoch
            peak = torch.cuda.max_memory_allocated(dev) / _GIB if dev.type == "cuda" else None
            rank_peaks = parallel.gather(peak)  # every rank's peak ([peak] for one process)
            row = {"epoch": epoch, "train_loss": train_loss, "epoch_time_s": seconds,
                   "positions_per_s": positions / seconds,
                   "peak_memory_gib": None if peak is None else max(rank_peaks),  # the largest rank's
                   "valid": None,
                   # the first epoch of a process (a fresh or a resumed run) pays compilation
                   # and autotuning again: it stays out of the steady-state mean
                   "warmup": epoch == start_epoch}
            if parallel.enabled:
                row["peak_memory_gib_per_rank"] = rank_peaks

            # --- validate, keep the best, stop early ---
            if epoch % schedule.eval_every == 0 or epoch == schedule.epochs:
                row["valid"] = valid = evaluation.model(model, run.seqs, "valid", run.amp)
                if valid[monitor] > best["metric"]:
                    best, bad_evals = {"metric": valid[monitor], "epoch": epoch, "valid": valid}, 0
                    folder.save_best({"model": model.state_dict(), "epoch": epoch, "best": best, **saved})
                else:
                    bad_evals += 1
                    stopped = bad_evals >= schedule.patience
            if stopped:
                stopped_by = "early stop"
            elif watch is not None and (reason := watch(row)):
                stopped, stopped_by = True, str(reason)
            stopped = parallel.decide(stopped)  # K ranks: rank 0 decides for all
            history.append(row)
            folder.save_checkpoint({
                "model": model.state_dict(), "optimizer": step.optimizer.state_dict(), "epoch": epoch,
                "rng": parallel.rng_state(ckpt.rng_state()), "best": best, "bad_evals": bad_evals,
                "stopped": stopped, "stopped_by": stopped_by, "history": history, **saved})
            folder.write_history(history)
            valid_msg = f"valid {monitor} {row['valid'][monitor]:.4f}" if row["valid"] else "no eval"
            log.info("epoch %d: loss %.4f, %.2f s (%.0f positions/s), %s, best %.4f at epoch %d%s",
                     epoch, train_loss, seconds, positions / seconds, valid_msg, best["metric"],
                     best["epoch"], f"; {stopped_by}" if stopped else "")

        # --- test with the best checkpoint ---
        if best["epoch"] == 0:
            raise TrainingError("no validation ran, so there is no best checkpoint to test")
        parallel.barrier()  # K ranks: rank 0 has written best.pt
        if test:
            model.load_state_dict(folder.best_model_state(dev))
            test_metrics = evaluation.model(model, run.seqs, "test", run.amp)
            popularity = evaluation.popularity(run.seqs, "test")
            log.info("test (best epoch %d): %s", best["epoch"], _fmt(test_metrics))
            log.info("popularity test: %s", _fmt(popularity))
        else:
            test_metrics = popularity = None
            log.info("test split not read (train.test = False): best validation %s %.4f at epoch %d",
                     monitor, best["metric"], best["epoch"])
        metrics = _metrics(record, history, best, stopped_by == "early stop", test_metrics, popularity, run)
        metrics["stopped_by"] = stopped_by
        folder.write_metrics(metrics)
        log.info("run ended: %s after %d epochs", stopped_by or "all epochs done", len(history))
        return metrics


# --- helpers ----------------------------------------------------------------------------------


def _metrics(record: dict, history: list[dict], best: dict, stopped: bool, test: dict | None,
             popularity: dict | None, run: Built) -> dict:
    """metrics.json. Epoch time (DESIGN.md): the mean after the first epoch, the first
    (compilation, autotuning) on its own; after a resume the resumed process's first epoch is
    left out too; with one epoch there is no steady-state figure (null)."""
    s = record["settings"]
    times = [r["epoch_time_s"] for r in history]
    steady = [r["epoch_time_s"] for r in history if not r.get("warmup", r["epoch"] == 1)]
    peaks = [r["peak_memory_gib"] for r in history if r["peak_memory_gib"] is not None]
    # K ranks: each rank's training peak over the epochs (catalog-parallel: V / K table rows each)
    rank_peaks = [r["peak_memory_gib_per_rank"] for r in history if "peak_memory_gib_per_rank" in r]
    per_rank = {"peak_memory_gib_per_rank": [None if None in p else max(p) for p in zip(*rank_peaks)]
                } if rank_peaks else {}
    return {
        "dataset": {"name": record["name"], "n_users": s["data.n_users"], "n_items": s["data.n_items"],
                    "n_interactions": s["data.n_interactions"], "path": record["data_path"],
                    "duplicates": record.get("duplicates")},
        "loss": record["loss"],
        "loss_settings": record["loss_settings"],
        "settings": record["settings_by_group"],
        "valid": best["valid"],
        "test": test,
        "popularity_test": popularity,
        "epoch_time_s": float(np.mean(steady)) if steady else None,
        "first_epoch_time_s": times[0],
        "peak_memory_gib": max(peaks) if peaks else None,
        **per_rank,
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "early_stopped": stopped,
        "steps_per_epoch": len(run.batches),
        # processes that trained (torchrun): positions_per_s is their aggregate
        "world_size": s.get("parallel.world_size", 1),
        "positions_per_epoch": run.batches.positions_per_epoch,
        "env": environment(device=run.device, dtype="bfloat16" if run.amp else "float32", seed=record["seed"]),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),  # the run's date
    }


def _diverged(folder: RunFolder, epoch: int, loss: float, steps: int) -> str:
    """The NaN stop's message, true in every case: which epoch the checkpoint holds, if any."""
    if folder.checkpoint.exists():
        kept = f"{folder.checkpoint} still holds the last good epoch ({epoch - 1})"
    else:
        kept = "no checkpoint was written (it diverged in the first epoch)"
    return f"epoch {epoch}: training loss is {loss} after {steps} steps; stopped. {kept}"


def _model_and_loss_settings(model: torch.nn.Module, loss_fn: Callable) -> dict:
    """The model's class and constructor arguments and the loss's name and settings, keyed
    as their gin bindings (``SASRec.dim``, ``cce.filter_eps``) so a refusal names them."""
    spec = model_settings(model)
    cls = spec["class"].rsplit(".", 1)[1]
    out = {"train.model_fn": spec["class"]}
    out.update({f"{cls}.{k}": v for k, v in spec["kwargs"].items() if k not in ("n_items", "max_len")})
    out["train.loss_fn"] = loss_name(loss_fn)
    base = getattr(_unwrap(loss_fn)[0], "__name__", "loss")
    out.update({f"{base}.{k}": v for k, v in _jsonable(loss_settings(loss_fn)).items()})
    return out


def _checksum(data: SequenceData) -> int:
    """CRC-32 of the sequences (offsets, then items): a resume on other data of the same size
    is refused too. About a second per GB, once per run."""
    crc = zlib.crc32(np.ascontiguousarray(data.offsets, dtype=np.int64))
    return zlib.crc32(np.ascontiguousarray(data.items, dtype=np.int32), crc)


def _jsonable(settings: dict) -> dict:
    """Settings as JSON values: numbers, strings, booleans and None stay, the rest become str."""
    plain = (int, float, str, bool, type(None))
    return {k: v if isinstance(v, plain) else str(v) for k, v in settings.items()}


def _check_values(*, n_items: int, **values) -> None:
    """Raises ValueError naming the ``train.*`` setting of the first bad value."""
    def is_int(v, low):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low

    def is_number(v):
        return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    rules = {"epochs": (lambda v: is_int(v, 1), "an integer >= 1"),
             "batch_size": (lambda v: is_int(v, 1), "an integer >= 1"),
             "max_len": (lambda v: is_int(v, 1), "an integer >= 1"),
             "patience": (lambda v: is_int(v, 1), "an integer >= 1"),
             "eval_every": (lambda v: is_int(v, 1), "an integer >= 1"),
             "nan_check_every": (lambda v: is_int(v, 0), "an integer >= 0"),
             "seed": (lambda v: is_int(v, 0) and v < 2**32, "an integer in [0, 2**32)"),
             "lr": (is_number, "a finite number >= 0"),
             "weight_decay": (is_number, "a finite number >= 0"),
             "eval_batch_size": (lambda v: v is None or is_int(v, 1), "None or an integer >= 1"),
             "ks": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                    and all(is_int(k, 1) and k <= n_items for k in v),
                    f"a non-empty tuple of integers in [1, {n_items}] (the catalog)")}
    for name, value in values.items():
        ok, what = rules[name]
        if not ok(value):
            raise ValueError(f"train.{name} must be {what}, got {value!r}")


def _check_ranks(ranks: Ranks, *, compile, cuda_graph: bool, loss: str) -> None:
    """Refuses, naming the setting, what a torchrun run (K > 1 ranks) cannot do yet."""
    if not ranks.enabled:
        return
    if compile or cuda_graph:
        raise ValueError("train.compile and train.cuda_graph are not supported under torchrun yet "
                         "(DDP's gradient hooks are not captured): drop them for a multi-rank run")
    if ranks.catalog_parallel and not loss_facts(loss).catalog_parallel:
        raise ValueError(f"train.catalog_parallel computes exact softmax CE over the sharded table: "
                         f"train.loss_fn must be ce or cce_exact (cce.filter_eps = None), not {loss}")


def _device(device: str) -> torch.device:
    """``train.device`` -> a usable torch.device, or ValueError naming the setting."""
    try:
        dev = resolve_device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device = {device!r}, but this machine has no CUDA device")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
