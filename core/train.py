"""The training/evaluation loop: one plain keyword-only function, gin-wrapped in experiments/run.py.

Protocol (DESIGN.md "Training", "Evaluation", "Measurement"), identical for every loss:
- batches are built on the device from a device-resident copy of the data;
- the loss sees only non-padding positions, gathered into a compact (N, D) block:
  ``loss_fn(e, model.catalog(), targets[mask] - 1)``; its size N is known on the host
  (``train_batch_positions``), so the gather needs no device->host sync;
- the step exists once (``core.step.make_step``), driven by ``run_epoch``: train() and
  experiments/bench/bench_epoch.py time the same code;
- Adam, bf16 autocast on CUDA, fp32 on CPU;
- validation every ``eval_every`` epochs, early stopping on validation NDCG@k, test with the
  best checkpoint, the popularity baseline on the same test split and masking;
- epoch time with the GPU synchronized and evaluation excluded; peak memory of training.

Run folder: checkpoint.pt (every epoch), best.pt, history.jsonl, metrics.json, log.txt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core import checkpoint as ckpt
from core.data.batching import DeviceSequences, n_train_batches, train_batch_positions
from core.data.shards import SequenceData
from core.env import environment, resolve_device
from core.evaluation import (
    count_train_users,
    default_eval_batch_size,
    evaluate_model,
    evaluate_popularity,
)
from core.graph_step import GraphCaptureError, make_graph_step
from core.losses import ce, loss_name as registered_name
from core.model import SASRec
from core.step import compile_mode, compile_model, make_optimizer, make_step, run_epoch

log = logging.getLogger(__name__)

_GIB = 2**30


class TrainingError(RuntimeError):
    """A run that cannot go on; the message is one line for the user."""


class TrainingDiverged(TrainingError):
    """The training loss became NaN or inf; the last good checkpoint is left untouched."""


# --- run folder helpers -------------------------------------------------------------------


@contextlib.contextmanager
def _run_logging(out_dir: Path):
    """Sends the ``core`` loggers to ``out_dir/log.txt`` and to stderr while the run lasts."""
    logger = logging.getLogger("core")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.FileHandler(out_dir / "log.txt"), logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(old_level)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def _write_history(history: list[dict], out_dir: Path) -> None:
    """history.jsonl, rewritten whole so that it always matches checkpoint.pt after a resume."""
    ckpt.write_text("".join(json.dumps(r) + "\n" for r in history), out_dir / "history.jsonl")


def _epoch_size(data: SequenceData, max_len: int) -> tuple[int, int]:
    """(training sequences, scored positions) per epoch, known on the host without a sync.

    A user with >= 2 training items gives one sequence and min(len(train) - 1, max_len) positions.
    """
    train_len = data.lengths().astype(np.int64) - 2
    used = train_len[train_len >= 2]
    return len(used), int(np.minimum(used - 1, max_len).sum())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the loop -------------------------------------------------------------------------------


def train(
    *,
    data: SequenceData,
    out_dir: str | Path,
    dataset_name: str | None = None,
    model_fn: Callable[..., torch.nn.Module] = SASRec,
    loss_fn: Callable = ce,
    loss_name: str | None = None,
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
) -> dict:
    """Trains ``model_fn(n_items=..., max_len=max_len)`` with ``loss_fn`` and returns metrics.json's dict.

    Args:
        data: the dataset (leave-one-out split inside: see ``core.data.shards.SequenceData``).
        out_dir: the run folder (created if needed).
        dataset_name: recorded in metrics.json; defaults to ``data.attrs["name"]`` or "data".
        model_fn: builds the model; called with ``n_items`` and ``max_len`` (``max_len`` is
            passed from here so that batches and positions can never disagree).
        loss_fn: ``loss(e (N, D), c (V, D), targets (N,)) -> scalar``.
        loss_name: name in metrics.json ("ce", "cce", "cce_exact"); defaults to the function's.
        patience: evaluations without a new best validation NDCG@ks[0] before stopping.
        eval_every: validate every this many epochs (and after the last one).
        mask_history: mask each user's already-seen items when ranking (validation, test,
            popularity alike).
        ks: cut-offs of the metrics; early stopping watches NDCG at the first one.
        device: "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
        amp: bf16 autocast on CUDA; ignored on CPU, which always runs fp32.
        eval_batch_size: users per evaluation batch; None sizes the (B, n_items) score matrix
            to about 1 GiB.
        resume: continue from ``out_dir/checkpoint.pt`` (same data and settings required);
            the result equals an uninterrupted run's (bit for bit on CPU).
        compile: ``torch.compile`` the model body for the fixed training shape: True (mode
            "default") or a mode of ``COMPILE_MODES`` ("reduce-overhead" = CUDA graphs). The
            last, smaller batch is padded with empty rows to keep one shape; evaluation runs
            the eager model (its batches have other shapes). The state dict keeps plain keys.
        cuda_graph: capture the whole step (forward, loss, backward, Adam) as CUDA graphs,
            one per bucket of scored positions (``core.graph_step``); CUDA only (ignored, with
            a warning, elsewhere) and instead of ``compile``. Needs a sync-free loss (``ce``,
            ``cce`` with its default split forward).
        show_progress: None = a progress bar only when stderr is a terminal.
        nan_check_every: also check the loss for NaN/inf every this many steps (one sync
            each); 0 checks once per epoch.

    Raises:
        TrainingDiverged: NaN/inf training loss (checkpoint.pt still holds the last good epoch).
        TrainingError: ``resume`` without a matching checkpoint.
    """
    try:  # a bad mode fails before the run folder exists
        mode = compile_mode(compile)
    except ValueError as err:
        raise TrainingError(str(err)) from None
    if cuda_graph and mode:
        raise TrainingError("train.cuda_graph captures the whole step and replaces train.compile: "
                            "set only one of them")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    use_amp = amp and dev.type == "cuda"
    name = dataset_name or data.attrs.get("name", "data")
    loss_label = loss_name or registered_name(loss_fn)
    monitor = f"NDCG@{ks[0]}"
    eval_bs = eval_batch_size or default_eval_batch_size(data.n_items)
    eval_args = dict(batch_size=eval_bs, max_len=max_len, mask_history=mask_history, ks=ks,
                     item_user_counts=data.train_item_user_counts(),
                     n_train_users=count_train_users(data))
    # What a checkpoint must agree with to be resumed: the rest may change (e.g. epochs).
    identity = dict(dataset=name, n_users=int(data.n_users), n_items=int(data.n_items),
                    loss=loss_label, batch_size=batch_size, max_len=max_len, seed=seed)

    with _run_logging(out):
        # --- setup ---
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        seqs = DeviceSequences.from_data(data, dev)
        model = model_fn(n_items=data.n_items, max_len=max_len).to(dev)
        forward = compile_model(model, compile)
        graphed = cuda_graph and dev.type == "cuda"
        if cuda_graph and not graphed:
            log.warning("train.cuda_graph: no CUDA device (%s), running the eager step", dev)
        optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay, capturable=graphed)
        if graphed:
            step = make_graph_step(model=model, optimizer=optimizer, loss_fn=loss_fn, amp=use_amp,
                                   batch_size=batch_size, max_len=max_len)
        else:
            step = make_step(model=model, forward=forward, optimizer=optimizer, loss_fn=loss_fn,
                             amp=use_amp, pad_to=batch_size if mode else None,
                             cudagraphs=mode == "reduce-overhead")
        history: list[dict] = []
        best = {"metric": -math.inf, "epoch": 0, "valid": None}
        bad_evals, start_epoch, stopped = 0, 1, False

        if resume:
            path = out / "checkpoint.pt"
            if not path.exists():
                raise TrainingError(f"--resume: no checkpoint at {path}")
            # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
            state = ckpt.load_torch(path, map_location="cpu")
            if state["identity"] != identity:
                raise TrainingError(
                    f"--resume: {path} was written by another setup: {state['identity']} != {identity}"
                )
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            ckpt.set_rng_state(state["rng"])
            history, best = state["history"], state["best"]
            bad_evals, stopped = state["bad_evals"], state["stopped"]
            start_epoch = state["epoch"] + 1
            log.info("resumed %s at epoch %d (best %s %.4f at epoch %d)",
                     out, state["epoch"], monitor, best["metric"], best["epoch"])

        sequences, positions = _epoch_size(data, max_len)
        steps_per_epoch = n_train_batches(seqs, batch_size=batch_size)
        log.info("%s: %d users, %d items, %d interactions; %s loss on %s; %d steps/epoch, "
                 "%d scored positions/epoch", name, data.n_users, data.n_items, len(data.items),
                 loss_label, dev, steps_per_epoch, positions)

        # --- epochs ---
        for epoch in range(start_epoch, epochs + 1):
            if stopped:
                break
            progress = tqdm(total=sequences, desc=f"epoch {epoch}", unit="seq", unit_scale=True,
                            leave=False, file=sys.stderr,
                            disable=None if show_progress is None else not show_progress)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)  # training peak, evaluation excluded
            _sync(dev)
            start = time.perf_counter()
            try:
                batch_positions = train_batch_positions(
                    data, batch_size=batch_size, max_len=max_len, epoch=epoch, seed=seed)
                train_loss, steps = run_epoch(
                    step=step, seqs=seqs, epoch=epoch, batch_size=batch_size, max_len=max_len,
                    seed=seed, positions=batch_positions, nan_check_every=nan_check_every,
                    progress=progress,
                )
            except torch.OutOfMemoryError as err:
                # Expected for CE on huge catalogs (the (N, V) logits): a result, not a crash.
                raise TrainingError(
                    f"out of device memory in epoch {epoch} ({loss_label}, {data.n_items} items, "
                    f"batch {batch_size}): {str(err).splitlines()[0]}"
                ) from err
            except GraphCaptureError as err:  # a setting that cannot work: one line, no traceback
                raise TrainingError(str(err)) from err
            finally:
                progress.close()
            _sync(dev)
            seconds = time.perf_counter() - start
            if not math.isfinite(train_loss):
                raise TrainingDiverged(
                    f"epoch {epoch}: training loss is {train_loss} after {steps} steps; stopped. "
                    f"{out / 'checkpoint.pt'} still holds the last good epoch ({epoch - 1})"
                )
            peak = torch.cuda.max_memory_allocated(dev) / _GIB if dev.type == "cuda" else None
            record = {"epoch": epoch, "train_loss": train_loss, "epoch_time_s": seconds,
                      "positions_per_s": positions / seconds, "peak_memory_gib": peak, "valid": None,
                      # the first epoch of a process (a fresh or a resumed run) pays compilation
                      # and autotuning again: it stays out of the steady-state mean
                      "warmup": epoch == start_epoch}

            if epoch % eval_every == 0 or epoch == epochs:
                valid = evaluate_model(model, model, seqs, split="valid", amp=use_amp, **eval_args)
                record["valid"] = valid
                if valid[monitor] > best["metric"]:
                    best = {"metric": valid[monitor], "epoch": epoch, "valid": valid}
                    bad_evals = 0
                    ckpt.save_torch({"model": model.state_dict(), "epoch": epoch, "best": best,
                                     "identity": identity}, out / "best.pt")
                else:
                    bad_evals += 1
                    stopped = bad_evals >= patience
            history.append(record)
            ckpt.save_torch({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "rng": ckpt.rng_state(), "best": best, "bad_evals": bad_evals, "stopped": stopped,
                "history": history, "identity": identity,
            }, out / "checkpoint.pt")
            _write_history(history, out)
            valid_msg = f"valid {monitor} {record['valid'][monitor]:.4f}" if record["valid"] else "no eval"
            log.info("epoch %d: loss %.4f, %.2f s (%.0f positions/s), %s, best %.4f at epoch %d%s",
                     epoch, train_loss, seconds, positions / seconds, valid_msg, best["metric"],
                     best["epoch"], "; early stop" if stopped else "")

        # --- test with the best checkpoint ---
        if best["epoch"] == 0:
            raise TrainingError("no validation ran, so there is no best checkpoint to test")
        model.load_state_dict(ckpt.load_torch(out / "best.pt", map_location=dev)["model"])
        test = evaluate_model(model, model, seqs, split="test", amp=use_amp, **eval_args)
        popularity = evaluate_popularity(seqs, split="test", **eval_args)
        log.info("test (best epoch %d): %s", best["epoch"], _fmt(test))
        log.info("popularity test: %s", _fmt(popularity))

        times = [r["epoch_time_s"] for r in history]
        steady = [r["epoch_time_s"] for r in history if not r.get("warmup", r["epoch"] == 1)]
        peaks = [r["peak_memory_gib"] for r in history if r["peak_memory_gib"] is not None]
        metrics = {
            "dataset": {"name": name, "n_users": int(data.n_users), "n_items": int(data.n_items),
                        "n_interactions": int(len(data.items))},
            "loss": loss_label,
            "valid": best["valid"],
            "test": test,
            "popularity_test": popularity,
            # DESIGN.md: the mean after the first epoch; the first (compilation, autotuning)
            # on its own. After a resume, the resumed process's first epoch is left out too.
            # With one epoch there is no steady-state figure: null.
            "epoch_time_s": float(np.mean(steady)) if steady else None,
            "first_epoch_time_s": times[0],
            "peak_memory_gib": max(peaks) if peaks else None,
            "epochs": len(history),
            "best_epoch": best["epoch"],
            "early_stopped": stopped,
            "steps_per_epoch": steps_per_epoch,
            "positions_per_epoch": positions,
            "env": environment(device=dev, dtype="bfloat16" if use_amp else "float32", seed=seed),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),  # the run's date
        }
        ckpt.write_json(metrics, out / "metrics.json")
        return metrics


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
