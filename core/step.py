"""The training step and epoch, shared by ``core.train.train`` and experiments/bench/bench_epoch.py.

The step exists once (``make_step``): forward, the loss on the compact (N, D) block of
non-padding positions, backward, optimizer step. Its size N is known on the host
(``core.data.batching.train_batch_positions``), so the gather needs no device->host sync.
``run_epoch`` drives it over one shuffled pass; ``compile_model`` optionally compiles the body.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.data.batching import DeviceSequences, train_batches
from core.evaluation import autocast

_PROGRESS_REFRESH_S = 2.0  # the bar's loss costs one device sync per refresh


# --- one step -------------------------------------------------------------------------------

# torch.compile modes for ``train(compile=...)``; True means "default". "reduce-overhead" adds
# CUDA graphs (the model body only: the compact block's size changes every batch).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


def compile_model(model: torch.nn.Module, compile: bool | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` itself (``compile`` False) or its body compiled for one fixed (B, L) shape.

    ``dynamic=False``: every training batch has the same shape because ``make_step`` pads the
    last, smaller one (``pad_to``), so one graph serves the whole run and no recompile happens.
    """
    mode = compile_mode(compile)
    return model if mode is None else torch.compile(model, mode=mode, dynamic=False)


def compile_mode(compile: bool | str) -> str | None:
    """``train(compile=...)`` -> a torch.compile mode, or None for eager."""
    if compile is False or compile is None:
        return None
    mode = "default" if compile is True else compile
    if mode not in COMPILE_MODES:
        raise ValueError(f"train.compile must be True, False or one of {COMPILE_MODES}, got {compile!r}")
    return mode


def make_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float,
                   capturable: bool = False) -> torch.optim.Optimizer:
    """Adam, the same for every loss: fused on CUDA (one kernel for all parameters), foreach elsewhere.

    ``capturable``: step counters on the device, as a CUDA-graphed step needs (``core.graph_step``).
    """
    on_cuda = next(model.parameters()).is_cuda
    kind = {"fused": True, "capturable": capturable} if on_cuda else {"foreach": True}
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, **kind)


def compact_index(mask: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) int64 flat indices of ``mask``'s True entries in row-major order, without a sync.

    What ``mask.flatten().nonzero()`` gives, but sized by the caller (``n`` = the number of True
    entries, known on the host), so the device never has to report a count back. Real entries
    go to slots 0..n-1 in order; the rest all land on the spare slot n, which is dropped.
    """
    flat = mask.flatten()  # (B*L,)
    if not flat.is_cuda and n != int(flat.sum()):  # free on the CPU: catches a wrong count in tests
        raise ValueError(f"compact_index: the mask has {int(flat.sum())} True entries, not {n}")
    slot = torch.where(flat, flat.cumsum(0) - 1, n)  # (B*L,)
    index = torch.zeros(n + 1, dtype=torch.int64, device=flat.device)
    index.scatter_(0, slot, torch.arange(flat.numel(), device=flat.device))
    return index[:n]


def make_step(
    *,
    model: torch.nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    amp: bool,
    pad_to: int | None = None,
    cudagraphs: bool = False,
) -> Callable[..., torch.Tensor]:
    """The training step, the one place it exists: ``step(inputs, targets, positions=None, mark=None)``.

    ``step`` runs forward, ``loss_fn(e, model.catalog(), item_id - 1)`` on the compact (N, D)
    block of non-padding positions, backward and ``optimizer.step()``, and returns the loss as a
    device scalar (no sync).

    - ``positions``: the batch's number of scored positions, known on the host
      (``train_batch_positions``): the block is gathered with ``compact_index``, sync-free. None
      gathers with the boolean mask (``hidden[mask]``), whose data-sized output makes the host
      wait for the device once per step. Both give the same block, bit for bit.
    - ``pad_to``: pads a smaller (last) batch with empty rows to this many, so a compiled body
      sees one shape. Empty rows have no targets and SASRec's rows never interact, so the loss
      and gradients are those of the unpadded batch (only dropout draws differ).
    - ``cudagraphs``: tells CUDA-graph trees where each step begins (``reduce-overhead``).
    - ``mark(name)``: for timing only; called after each phase: "model_forward", "loss"
      (compaction, loss forward and backward), "model_backward", "optimizer". It splits the
      backward pass in two (the loss's, then the model body's) so that each can be timed.
    """
    device = next(model.parameters()).device

    def step(inputs: torch.Tensor, targets: torch.Tensor, positions: int | None = None,
             mark: Callable[[str], None] | None = None) -> torch.Tensor:
        if pad_to is not None and inputs.shape[0] < pad_to:
            rows = (0, 0, 0, pad_to - inputs.shape[0])  # (B, L) -> (pad_to, L), zeros = padding
            inputs, targets = F.pad(inputs, rows), F.pad(targets, rows)
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, amp):
            hidden = forward(inputs)  # (B, L, D)
            head_in = hidden
            if mark is not None:
                mark("model_forward")
                head_in = hidden.detach().requires_grad_()
            mask = targets != 0  # (B, L): positions with a real next item
            if positions is None:
                e, t = head_in[mask], targets[mask]  # (N, D), (N,)
            else:
                index = compact_index(mask, positions)  # (N,)
                e = head_in.flatten(0, 1).index_select(0, index)  # (N, D)
                t = targets.flatten().index_select(0, index)  # (N,)
            loss = loss_fn(e, model.catalog(), t - 1)  # catalog column = item id - 1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if mark is not None:
            mark("loss")
            hidden.backward(head_in.grad)
            mark("model_backward")
        optimizer.step()
        if mark is not None:
            mark("optimizer")
        return loss.detach()

    return step


# --- one epoch ------------------------------------------------------------------------------


def run_epoch(
    *,
    step: Callable[..., torch.Tensor],
    seqs: DeviceSequences,
    epoch: int,
    batch_size: int,
    max_len: int,
    seed: int,
    positions: Sequence[int] | None = None,
    nan_check_every: int = 0,
    progress: tqdm | None = None,
) -> tuple[float, int]:
    """One pass over the training sequences with ``make_step``'s ``step`` -> (mean batch loss, steps).

    ``positions``: per-batch scored positions (``train_batch_positions`` with the same
    arguments) for sync-free compaction; None uses the boolean mask (one sync per step).
    No other host sync inside the epoch (the loss sum stays on the device) except the optional
    NaN check every ``nan_check_every`` steps and the progress bar's loss, refreshed at most
    every couple of seconds and only when a bar is shown.
    """
    loss_sum = torch.zeros((), device=seqs.device)
    steps = 0
    last_refresh = time.perf_counter()
    batches = train_batches(seqs, batch_size=batch_size, max_len=max_len, epoch=epoch, seed=seed)
    for inputs, targets in batches:
        loss = step(inputs, targets, None if positions is None else positions[steps])
        loss_sum += loss
        steps += 1

        if nan_check_every and steps % nan_check_every == 0 and not torch.isfinite(loss_sum):
            return float("nan"), steps
        if progress is not None:
            progress.update(inputs.shape[0])
            if not progress.disable and time.perf_counter() - last_refresh > _PROGRESS_REFRESH_S:
                progress.set_postfix(loss=f"{loss_sum.item() / steps:.4f}", refresh=False)
                last_refresh = time.perf_counter()
    return (loss_sum / max(steps, 1)).item(), steps
