"""The whole training step as CUDA graphs: one launch per step instead of hundreds.

Measured on an H200 (experiments/bench/NOTES_speed.md): with the model body compiled and graphed, a
beauty-like step still took ~5 ms of host time to issue (batch gather, compaction, the loss's
kernels, autograd, Adam) for ~3 ms of GPU work, so epochs were bound by Python, not the GPU.
Here forward, loss, backward and ``optimizer.step()`` are captured once and replayed.

What a graph needs, and how the step provides it:
- Static shapes. Batches are padded to ``batch_size`` rows (as ``make_step(pad_to=...)``
  does), and the compact block of scored positions to ``n_pad``, the batch's count rounded up
  up to one of a few sizes (``bucket_size``): one graph per size, captured the first time.
  Padded slots get ``IGNORE_INDEX`` targets: they add nothing to the loss or the gradients
  (the loss is the mean over real positions, as in ``make_step``).
- No host syncs. The slot count is compared on the device (``padded_compact_index``), and
  the loss must be sync-free: ``ce`` and ``cce`` (its default split forward) are;
  ``cce(forward="library")`` is not (``nonzero()`` per call) and fails at capture.
- Static memory. Gradients stay allocated (zeroed in place, never set to None) and Adam runs
  with ``capturable=True`` so its step counter lives on the device.
The first batch of each bucket runs eagerly on a side stream (its real training step; it also
compiles kernels and allocates gradients and optimizer state), then the same step is captured:
capture records without executing, so no batch is trained twice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.losses import IGNORE_INDEX

# Positions: the smallest size step. Every captured size keeps memory in the graphs' pool, so
# small batches share few, padded graphs. beauty-like CCE on an H200 (bench_epoch, one call):
# min bucket 64 -> 7.18 s, 0.77 GiB; 256 -> 7.38 s, 0.64 GiB; 1024 -> 7.81 s, 0.48 GiB.
MIN_BUCKET = 1024


class GraphCaptureError(RuntimeError):
    """The step could not be captured (e.g. a loss that syncs with the host)."""


def padded_compact_index(mask: torch.Tensor, n_pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index (n_pad,), valid (n_pad,)): True positions of ``mask`` first, in order, then filler.

    ``n_pad`` must be at least the number of True entries. Filler slots point at position 0
    and are marked invalid on the device, so nothing here needs the count on the host.
    """
    flat = mask.flatten()  # (B*L,)
    rank = flat.cumsum(0)  # (B*L,): 1-based slot of each True entry
    slot = torch.where(flat, rank - 1, n_pad)
    index = torch.zeros(n_pad + 1, dtype=torch.int64, device=flat.device)
    index.scatter_(0, slot, torch.arange(flat.numel(), device=flat.device))
    valid = torch.arange(n_pad, device=flat.device) < rank[-1]
    return index[:n_pad], valid


def bucket_size(positions: int, min_bucket: int = MIN_BUCKET) -> int:
    """``positions`` rounded up to a multiple of 1/16 of the next power of two (and of
    ``min_bucket``): at most 12.5% padding, at most 8 graphs per doubling of the batch size."""
    step = max(min_bucket, (1 << max(positions - 1, 1).bit_length()) // 16)
    return max(step, -(-positions // step) * step)


def step_body(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, *,
              inputs: torch.Tensor, targets: torch.Tensor, n_pad: int, amp: bool) -> torch.Tensor:
    """One step on fixed-shape tensors: forward, loss on ``n_pad`` slots, backward, Adam."""
    optimizer.zero_grad(set_to_none=False)  # the gradient buffers must keep their addresses
    # cache_enabled=False: autocast's weight-cast cache must not outlive a captured region.
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
        hidden = model(inputs)  # (B, L, D)
        index, valid = padded_compact_index(targets != 0, n_pad)  # (n_pad,), (n_pad,)
        e = hidden.flatten(0, 1).index_select(0, index)  # (n_pad, D)
        t = torch.where(valid, targets.flatten().index_select(0, index) - 1, IGNORE_INDEX)
        loss = loss_fn(e, model.catalog(), t)
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_graph_step(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    loss_fn: Callable, amp: bool, batch_size: int, max_len: int,
                    min_bucket: int = MIN_BUCKET) -> Callable[..., torch.Tensor]:
    """``step(inputs, targets, positions, mark=None)`` like ``make_step``'s, replayed as graphs.

    CUDA only; ``optimizer`` must be Adam with ``capturable=True`` (``make_optimizer``).
    ``positions`` (the batch's scored positions, from ``train_batch_positions``) picks the
    graph. ``mark`` (timing) sees the whole replay as the model phase: a graph has no inside.
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ValueError("make_graph_step: CUDA graphs need a CUDA device")
    static_inputs = torch.zeros((batch_size, max_len), dtype=torch.int64, device=device)
    static_targets = torch.zeros_like(static_inputs)
    graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
    pool = torch.cuda.graph_pool_handle()  # one memory pool: graphs replay one at a time

    def body(n_pad: int) -> torch.Tensor:
        return step_body(model, optimizer, loss_fn, inputs=static_inputs, targets=static_targets,
                         n_pad=n_pad, amp=amp)

    def capture(n_pad: int) -> torch.Tensor:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            loss = body(n_pad)  # this batch's real step, run eagerly
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=pool):
                out = body(n_pad)
        except RuntimeError as err:
            raise GraphCaptureError(
                "cuda_graph: the training step could not be captured (a host sync in the loss? "
                f"ce and cce's default split forward are sync-free): {str(err).splitlines()[0]}"
            ) from err
        graphs[n_pad] = (graph, out)
        return loss

    def step(inputs: torch.Tensor, targets: torch.Tensor, positions: int | None = None,
             mark: Callable[[str], None] | None = None) -> torch.Tensor:
        if positions is None:
            raise ValueError("the graphed step needs each batch's scored positions (positions=...)")
        rows = inputs.shape[0]
        static_inputs[:rows].copy_(inputs)
        static_targets[:rows].copy_(targets)
        if rows < batch_size:  # the last, smaller batch: empty rows have no targets
            static_inputs[rows:].zero_()
            static_targets[rows:].zero_()
        n_pad = bucket_size(positions, min_bucket)
        if n_pad in graphs:
            graph, out = graphs[n_pad]
            graph.replay()
            loss = out.clone()  # ``out`` is overwritten by the next replay
        else:
            loss = capture(n_pad)
        if mark is not None:
            for phase in ("model_forward", "loss", "model_backward", "optimizer"):
                mark(phase)
        return loss

    return step
