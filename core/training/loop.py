"""Training: ``train`` takes its settings as small objects (``core.training.settings``), builds
the run (``build``: the same code the epoch benchmark times) and hands it to ``fit``, the epoch
loop. Gin binds the flat ``train.*`` names through ``core.training.flat``.

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

import dataclasses
import logging
import math
import random
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core import checkpoint as ckpt
from core.data.batching import DeviceSequences, TrainBatches
from core.data.shards import SequenceData
from core.env import environment
from core.evaluation import count_train_users, default_eval_batch_size, evaluate_model, evaluate_popularity
from core.losses import bind_to_data, ce, loss_facts, loss_name, loss_ran, loss_settings
from core.losses.registry import _unwrap
from core.model import SASRec
from core.training.errors import TrainingDiverged, TrainingError
from core.training.ranks import Ranks
from core.training.run_folder import BEST_FIX, CHECKPOINT_FIX, RunFolder, model_settings
from core.training.settings import Evaluation, Optim, Parallel, Schedule, TrainConfig
from core.training.step import GraphCaptureError, Step, StepSettings, make_step, run_epoch

log = logging.getLogger(__name__)

_GIB = 2**30


# --- what a run is built from ------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluator:
    """Full-catalog ranking of one split, for the model and for the popularity baseline
    (``Evaluation``'s settings with what the data fixes)."""

    ks: tuple[int, ...]
    mask_history: bool
    batch_size: int
    max_len: int
    item_user_counts: np.ndarray
    n_train_users: int
    ranks: Ranks = field(default_factory=Ranks)  # K ranks: each ranks a share, reduced exactly

    def _args(self, seqs: DeviceSequences, *, model: bool = False) -> dict:
        return dict(batch_size=self.batch_size, max_len=self.max_len, mask_history=self.mask_history,
                    ks=self.ks, item_user_counts=self.item_user_counts, n_train_users=self.n_train_users,
                    **self.ranks.eval_args(seqs, self.batch_size, model=model))

    def model(self, model: torch.nn.Module, seqs: DeviceSequences, split: str, amp: bool) -> dict:
        # catalog-parallel: each rank scores its catalog shard, top-k states merged (Ranks.eval_args)
        with self.ranks.evaluating(model):
            return evaluate_model(model, model, seqs, split=split, amp=amp, **self._args(seqs, model=True))

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


def build(data: SequenceData, *, model: Callable[..., torch.nn.Module], loss_fn: Callable, optim: Optim,
          step: StepSettings, device: torch.device, ranks: Ranks | None = None) -> Built:
    """Seeds every RNG (``optim.seed``), puts the data on ``device``, builds the model, its
    step and the batches.

    ``model`` is called with ``n_items`` and ``optim.max_len`` (passed from here so that batches
    and positions can never disagree); ``loss_fn`` is bound to the data first (``bind_to_data``).
    ``ranks``: the processes of a torchrun run (``core.training.ranks.Ranks``); the step
    then trains their DDP (and catalog-parallel) view of the model.
    """
    torch.manual_seed(optim.seed)
    np.random.seed(optim.seed)
    random.seed(optim.seed)
    seqs = DeviceSequences.from_data(data, device)
    ranks = ranks or Ranks()
    net = ranks.build_model(model, n_items=data.n_items, max_len=optim.max_len).to(device)
    train_step = make_step(ranks.prepare(net), ranks.loss(bind_to_data(loss_fn, data)), lr=optim.lr,
                           weight_decay=optim.weight_decay, settings=step, batch_size=optim.batch_size,
                           max_len=optim.max_len)
    batches = TrainBatches(seqs, batch_size=optim.batch_size, max_len=optim.max_len, seed=optim.seed)
    return Built(net, train_step, batches, seqs, device, step.amp and device.type == "cuda")


def check_ranks(ranks: Ranks, step: StepSettings, loss_fn: Callable) -> None:
    """Refuses, naming the setting, what a torchrun run (K > 1 ranks) cannot do yet."""
    if not ranks.enabled:
        return
    if step.compile or step.cuda_graph:
        raise ValueError("train.compile and train.cuda_graph are not supported under torchrun yet "
                         "(DDP's gradient hooks are not captured): drop them for a multi-rank run")
    loss = loss_name(loss_fn)
    if ranks.catalog_parallel and not loss_facts(loss).catalog_parallel:
        raise ValueError(f"train.catalog_parallel computes exact softmax CE over the sharded table: "
                         f"train.loss_fn must be ce or cce_exact (cce.filter_eps = None), not {loss}")


# --- train --------------------------------------------------------------------------------------


def train(data: SequenceData, out_dir: str | Path | RunFolder, *,
          model: Callable[..., torch.nn.Module] = SASRec, loss_fn: Callable = ce, optim: Optim = Optim(),
          schedule: Schedule = Schedule(), evaluation: Evaluation = Evaluation(),
          step: StepSettings = StepSettings(), parallel: Parallel = Parallel(), resume: bool = False,
          watch: Callable[[dict], str | None] | None = None, dataset_name: str | None = None,
          data_path: str | Path | None = None) -> dict:
    """Trains ``model(n_items=..., max_len=optim.max_len)`` with ``loss_fn`` into the run folder
    ``out_dir``; returns metrics.json's dict. The settings are small frozen objects
    (``core.training.settings``: what each holds, and why ``max_len`` and ``seed`` are ``optim``'s);
    gin binds them through the flat ``train.*`` names (``core.training.flat.train_flat``).

    ``data``: a SequenceData (leave-one-out split inside); ``dataset_name`` / ``data_path`` are
    recorded (``load_run`` reloads the data from the path). ``loss_fn(e (N, D), c (V, D),
    targets (N,)) -> scalar``, named in metrics.json by ``core.losses.loss_name``. ``resume``:
    continue from checkpoint.pt; only the ``schedule``, ``parallel.device`` and
    ``evaluation.batch_size`` may change (and, catalog-parallel, the number of ranks K >= 2:
    the sharded checkpoint is resharded; that resume is not bit-equal to either K's run). The result equals an uninterrupted run's bit for bit
    on the CPU with 1 or 2 processes; with 3 ranks (data- or catalog-parallel) the weights end
    up to ~3e-7 apart (the attention key bias, whose gradient is rounding noise; others ~7e-9;
    tiny preset, 1 + 1 epochs): a fresh process's first step all-reduces the gradients in
    DDP's initial bucket layout, later steps in the rebuilt one, and gloo sums three ranks'
    values in an order that depends on the position in the bucket (two commute exactly).
    Every bad value raises ValueError naming its ``train.*`` setting before anything is written.

    ``parallel.ctx``: this process's place in a torchrun run (None: one process). Each rank
    trains its share of every global batch of ``optim.batch_size`` rows (the learning rate is
    not rescaled) and ranks its share of the users; rank 0 writes the run folder.
    ``parallel.catalog_parallel``: the item table split by item range over the ranks (exact
    softmax CE: ``ce`` or ``cce_exact``); nothing changes on one process.

    ``evaluation.test``: False leaves the test split unread; metrics.json's ``test`` and
    ``popularity_test`` are then null. ``watch(row)``: called after every epoch with its history
    row (a trial's pruner and time cap); a string it returns ends training there, as that reason
    (``stopped_by`` in metrics.json), and the best checkpoint so far is what the run keeps.

    Raises:
        TrainingDiverged: NaN/inf training loss (checkpoint.pt keeps the last good epoch).
        RunFolderError: the folder refuses (an existing run, a changed resume, a bad path).
        TrainingError: out of device memory, a step that cannot be captured.
    """
    config = TrainConfig(model, loss_fn, optim, schedule, evaluation, step, parallel)
    _check_values(n_items=data.n_items, **config.flat())
    evaluation = dataclasses.replace(evaluation, ks=tuple(int(k) for k in evaluation.ks))
    ranks = Ranks(parallel.ctx, catalog_parallel=parallel.catalog_parallel)
    check_ranks(ranks, step, loss_fn)
    run = build(data, model=model, loss_fn=loss_fn, optim=optim, step=step,
                device=parallel.resolve_device(), ranks=ranks)
    evaluator = Evaluator(evaluation.ks, evaluation.mask_history,
                          evaluation.batch_size or default_eval_batch_size(data.n_items), optim.max_len,
                          data.train_item_user_counts(), count_train_users(data), ranks)
    record = _record(data, run, dataclasses.replace(config, evaluation=evaluation), ranks,
                     name=dataset_name or data.attrs.get("name", "data"),
                     data_path=str(data_path) if data_path is not None else data.attrs.get("path"))
    folder = out_dir if isinstance(out_dir, RunFolder) else RunFolder(out_dir)
    return fit(run, folder, schedule=schedule, evaluator=evaluator, record=record, resume=resume,
               ranks=ranks, test=evaluation.test, watch=watch)


def _record(data: SequenceData, run: Built, config: TrainConfig, ranks: Ranks, *, name: str,
            data_path: str | None) -> dict:
    """What the checkpoints and metrics.json record about the run; its ``settings`` are what a
    resume must not change (checked against the checkpoint's, keyed as their gin bindings)."""
    optim, step, evaluation, loss_fn = config.optim, config.step, config.evaluation, config.loss_fn
    settings = {
        "data.name": name, "data.n_users": int(data.n_users), "data.n_items": int(data.n_items),
        "data.n_interactions": int(len(data.items)), "data.checksum": _checksum(data),
        **_model_and_loss_settings(run.model, loss_fn),
        **{f"train.{k}": v for k, v in dict(
            batch_size=optim.batch_size, max_len=optim.max_len, lr=optim.lr, weight_decay=optim.weight_decay,
            seed=optim.seed, amp=step.amp, compile=step.compile, cuda_graph=step.cuda_graph,
            mask_history=evaluation.mask_history, ks=evaluation.ks).items()},
        **ranks.settings(),
    }
    schedule, spec = config.schedule, model_settings(run.model)
    return {"name": name, "data_path": data_path,
            "loss": loss_name(loss_fn), "loss_settings": _jsonable(loss_settings(loss_fn)),
            "loss_ran": "catalog_parallel_ce" if ranks.catalog_parallel else loss_ran(loss_fn, run.device),
            "settings": settings, "model_settings": spec, "seed": optim.seed,
            # metrics.json's "settings": the same facts grouped, for reports (experiments/report.py)
            "settings_by_group": {
                "model": {"class": spec["class"], **_jsonable(spec["kwargs"])},
                "loss": {"name": loss_name(loss_fn), **_jsonable(loss_settings(loss_fn))},
                "optimizer": {"lr": float(optim.lr), "weight_decay": float(optim.weight_decay),
                              "batch_size": int(optim.batch_size)},  # plain numbers: numpy's are not JSON
                "schedule": {"epochs": int(schedule.epochs), "patience": int(schedule.patience),
                             "eval_every": int(schedule.eval_every),
                             "nan_check_every": int(schedule.nan_check_every)},
                "evaluation": {"ks": list(evaluation.ks), "mask_history": evaluation.mask_history},
                # packed: the body ran on packed real positions (SASRec.packed, batches at most
                # half full: core.training.step.packs_batch); a record, not a resume check
                "step": {"amp": step.amp, "compile": step.compile, "cuda_graph": step.cuda_graph,
                         "graph_min_bucket": int(step.graph_min_bucket),
                         "packed": bool(run.step.packed)},
                "data": {k.removeprefix("data."): v for k, v in settings.items() if k.startswith("data.")},
                "parallel": {"world_size": settings.get("parallel.world_size", 1),
                             "catalog_parallel": settings.get("train.catalog_parallel", False),
                             # the cap each process ran under (a CUDA device only)
                             "gpu_memory_gib": (config.parallel.gpu_memory_gib
                                                if run.device.type == "cuda" else None)},
                "seed": int(optim.seed)},
            # rows the preparation dropped as exact duplicates (stats.json has them too)
            "duplicates": data.attrs.get("duplicates")}


# --- fit: the epoch loop ----------------------------------------------------------------------


@dataclass
class Progress:
    """Where training stands: what checkpoint.pt keeps between epochs (and a resume reads)."""

    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"metric": -math.inf, "epoch": 0, "valid": None})
    bad_evals: int = 0  # evaluations since the last new best
    stopped: bool = False
    stopped_by: str | None = None  # why training ended before its last epoch: "early stop" or ``watch``'s
    epoch: int = 0  # the last epoch done

    @classmethod
    def from_checkpoint(cls, state: dict) -> Progress:
        return cls(state["history"], state["best"], state["bad_evals"], state["stopped"],
                   state.get("stopped_by", "early stop" if state["stopped"] else None), state["epoch"])


def fit(run: Built, folder: RunFolder, *, schedule: Schedule, evaluator: Evaluator, record: dict,
        resume: bool, ranks: Ranks, test: bool = True,
        watch: Callable[[dict], str | None] | None = None) -> dict:
    """Trains ``run`` epoch by epoch into ``folder``: validation, early stopping, checkpoints,
    then the test of the best model; returns (and writes) metrics.json's dict.

    ``record``: what the checkpoints and metrics.json record about the run (``train`` makes it);
    ``ranks``: the processes (``Ranks()``: one); ``test`` and ``watch``: see ``train``.
    """
    ranks.agree(record)  # K ranks: the same settings everywhere, or one line on every rank
    model, step = run.model, run.step
    monitor = f"NDCG@{evaluator.ks[0]}"
    saved = {"settings": record["settings"], "model_settings": record["model_settings"],
             "data_path": record["data_path"]}
    with folder.open(resume=resume, settings=record["settings"], writer=ranks.writer,
                     epochs=schedule.epochs) as state:
        ranks.see_shared(folder.path)
        at = Progress()
        if state is not None:  # a sealed file, or a sharded folder (each rank reads its rows)
            ranks.restore(model, step.optimizer, state, CHECKPOINT_FIX)
            ckpt.set_rng_state(ranks.own_rng_state(state["rng"]))
            at = Progress.from_checkpoint(state)
            log.info("resumed %s at epoch %d (best %s %.4f at epoch %d)", folder.path, at.epoch,
                     monitor, at.best["metric"], at.best["epoch"])
        _log_start(run, record)
        start_epoch = at.epoch + 1
        for epoch in range(start_epoch, schedule.epochs + 1):
            if at.stopped:
                break
            folder.stage = f"epoch {epoch}"  # where a SIGTERM stopped it, for log.txt
            row = _train_epoch(run, ranks, folder, record, schedule, epoch, first=epoch == start_epoch)

            # --- validate, keep the best, stop early ---
            if epoch % schedule.eval_every == 0 or epoch == schedule.epochs:
                row["valid"] = valid = evaluator.model(model, run.seqs, "valid", run.amp)
                if valid[monitor] > at.best["metric"]:
                    at.best, at.bad_evals = {"metric": valid[monitor], "epoch": epoch, "valid": valid}, 0
                    folder.save_best(ranks.checkpoint(model, None, {"epoch": epoch, "best": at.best, **saved}))
                else:
                    at.bad_evals += 1
                    at.stopped = at.bad_evals >= schedule.patience
            if at.stopped:
                at.stopped_by = "early stop"
            elif watch is not None and (reason := watch(row)):
                at.stopped, at.stopped_by = True, str(reason)
            at.stopped = ranks.decide(at.stopped)  # K ranks: rank 0 decides for all
            at.history.append(row)
            at.epoch = epoch
            folder.save_checkpoint(ranks.checkpoint(model, step.optimizer, {
                "epoch": epoch, "rng": ranks.rng_state(ckpt.rng_state()), "best": at.best,
                "bad_evals": at.bad_evals, "stopped": at.stopped, "stopped_by": at.stopped_by,
                "history": at.history, **saved}))
            folder.write_history(at.history)
            valid_msg = f"valid {monitor} {row['valid'][monitor]:.4f}" if row["valid"] else "no eval"
            log.info("epoch %d: loss %.4f, %.2f s (%.0f positions/s), %s, best %.4f at epoch %d%s",
                     epoch, row["train_loss"], row["epoch_time_s"], row["positions_per_s"], valid_msg,
                     at.best["metric"], at.best["epoch"], f"; {at.stopped_by}" if at.stopped else "")

        # --- test with the best checkpoint ---
        if at.best["epoch"] == 0:
            raise TrainingError("no validation ran, so there is no best checkpoint to test")
        ranks.barrier()  # K ranks: rank 0 has written best.pt
        folder.stage = "the test"
        test_metrics, popularity = _test(run, folder, evaluator, at.best, monitor, read=test)
        metrics = _metrics(record, at.history, at.best, at.stopped_by, test_metrics, popularity, run)
        folder.write_metrics(metrics)
        log.info("run ended: %s after %d epochs", at.stopped_by or "all epochs done", len(at.history))
        return metrics


def _train_epoch(run: Built, ranks: Ranks, folder: RunFolder, record: dict, schedule: Schedule,
                 epoch: int, *, first: bool) -> dict:
    """One training epoch (synchronized wall time, evaluation excluded) -> its history row."""
    step, batches, dev, data = run.step, run.batches, run.device, record["settings"]
    progress = tqdm(total=batches.sequences_per_epoch, desc=f"epoch {epoch}", unit="seq",
                    unit_scale=True, leave=False, file=sys.stderr,
                    disable=None if schedule.show_progress is None else not schedule.show_progress)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)  # training peak, evaluation excluded
    _sync(dev)
    start = time.perf_counter()
    try:
        train_loss, steps = run_epoch(step, ranks.batches(batches.epoch(epoch)), device=dev,
                                      nan_check_every=schedule.nan_check_every, progress=progress)
    except torch.OutOfMemoryError as err:
        # Expected for CE on huge catalogs (the (N, V) logits): a result, not a crash.
        raise TrainingError(f"out of device memory in epoch {epoch} ({record['loss']}, {data['data.n_items']} "
                            f"items, batch {data['train.batch_size']}): {str(err).splitlines()[0]}") from err
    except GraphCaptureError as err:  # a setting that cannot work: one line, no traceback
        raise TrainingError(str(err)) from err
    finally:
        progress.close()
    _sync(dev)
    seconds = time.perf_counter() - start
    train_loss = ranks.mean(train_loss)
    if not math.isfinite(train_loss):
        raise TrainingDiverged(_diverged(folder, epoch, train_loss, steps))
    peak = torch.cuda.max_memory_allocated(dev) / _GIB if dev.type == "cuda" else None
    rank_peaks = ranks.gather(peak)  # every rank's peak ([peak] for one process)
    row = {"epoch": epoch, "train_loss": train_loss, "epoch_time_s": seconds,
           "positions_per_s": batches.positions_per_epoch / seconds,
           "peak_memory_gib": None if peak is None else max(rank_peaks),  # the largest rank's
           "valid": None,
           # the first epoch of a process (a fresh or a resumed run) pays compilation
           # and autotuning again: it stays out of the steady-state mean
           "warmup": first}
    if ranks.enabled:
        row["peak_memory_gib_per_rank"] = rank_peaks
    return row


def _asked_and_ran(record: dict) -> str:
    """``flash_ce``, or ``flash_ce (running ce)`` where a stand-in computes it."""
    asked, ran = record["loss"], record["loss_ran"]
    return asked if ran == asked else f"{asked} (running {ran})"


def _log_start(run: Built, record: dict) -> None:
    data = record["settings"]
    if run.step.warning:
        log.warning(run.step.warning)
    log.info("%s: %d users, %d items, %d interactions; %s loss on %s (%s step); %d steps/epoch, "
             "%d scored positions/epoch", record["name"], data["data.n_users"], data["data.n_items"],
             data["data.n_interactions"], _asked_and_ran(record), run.device, run.step.kind, len(run.batches),
             run.batches.positions_per_epoch)
    if record.get("duplicates"):
        dup = record["duplicates"]
        log.info("data: %d exact duplicate (user, item, time) rows %s when it was prepared",
                 dup.get("rows", 0), "dropped" if dup.get("dropped", True) else "kept")


def _test(run: Built, folder: RunFolder, evaluator: Evaluator, best: dict, monitor: str, *,
          read: bool) -> tuple[dict | None, dict | None]:
    """The best checkpoint's test metrics and the popularity baseline's (None, None: ``read``
    False, the test split left unread)."""
    if not read:
        log.info("test split not read (train.test = False): best validation %s %.4f at epoch %d",
                 monitor, best["metric"], best["epoch"])
        return None, None
    evaluator.ranks.restore(run.model, None, folder.read_best(run.device), BEST_FIX)  # sharded: each rank its rows
    test_metrics = evaluator.model(run.model, run.seqs, "test", run.amp)
    popularity = evaluator.popularity(run.seqs, "test")
    log.info("test (best epoch %d): %s", best["epoch"], _fmt(test_metrics))
    log.info("popularity test: %s", _fmt(popularity))
    return test_metrics, popularity


# --- helpers ----------------------------------------------------------------------------------


def _metrics(record: dict, history: list[dict], best: dict, stopped_by: str | None, test: dict | None,
             popularity: dict | None, run: Built) -> dict:
    """metrics.json; ``stopped_by``: why training ended early (None: all epochs). ``loss`` is the
    loss asked for (its label: what reports group by and a resume checks), ``loss_ran`` what
    computed it (``core.losses.loss_ran``: e.g. ``ce`` for ``flash_ce`` on a CPU, ``cce_reference``
    for ``cce``; the same label where the loss's own kernels ran). Epoch time (DESIGN.md): the mean after the first epoch, the first
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
        "loss_ran": record["loss_ran"],
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
        "early_stopped": stopped_by == "early stop",
        "stopped_by": stopped_by,
        "steps_per_epoch": len(run.batches),
        # processes that trained (torchrun): positions_per_s is their aggregate
        "world_size": s.get("parallel.world_size", 1),
        "positions_per_epoch": run.batches.positions_per_epoch,
        "env": environment(device=run.device, dtype="bfloat16" if run.amp else "float32", seed=record["seed"]),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),  # the run's date
    }


def _diverged(folder: RunFolder, epoch: int, loss: float, steps: int) -> str:
    """The NaN stop's message, true in every case: which epoch the checkpoint holds, if any."""
    if folder.has_checkpoint():
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
    for name, (ok, what) in rules.items():
        if name in values and not ok(values[name]):
            value = values[name]
            raise ValueError(f"train.{name} must be {what}, got {value!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
