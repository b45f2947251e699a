"""The training step, the one place it exists: eager, with a torch.compile'd body, or the whole
step captured as CUDA graphs. ``train`` and experiments/bench/bench_epoch.py both build it with
``make_step`` and drive it with ``run_epoch``, so the benchmark times what training runs (from
outside: it wraps the loss and hooks the optimizer; nothing here exists for timing).

Every variant computes the same thing: forward, ``loss_fn(e, model.catalog(), item_id - 1)``
on the compact (N, D) block of non-padding positions, backward, Adam. Where the model holds its
whole table (``ties``) the catalog comes from the forward itself (``with_catalog``): the same
values, and the table's gradient is built in one buffer (``core.model.TiedItemTable``), also
under the graphed step's compiled body (``compiled_forward_block``: the tied lookup runs
eagerly, a graph break); only the eager step's ``train.compile``d body keeps ``catalog()``. N is
known on the host (``core.data.batching.Batch.positions``), so gathering the block needs no
device->host sync.

Why CUDA graphs (measured on an H200, experiments/bench/NOTES_speed.md): with the model body
compiled and graphed, a beauty-like step still took ~5 ms of host time to issue (batch
gather, compaction, the loss's kernels, autograd, Adam) for ~3 ms of GPU work, so epochs were
bound by Python, not the GPU. The graphed step captures forward, loss, backward and
``optimizer.step()`` once per size and replays them. What a graph needs, and how it gets it:
- static shapes: batches are padded to ``batch_size`` rows, the compact block to ``n_pad``,
  the batch's count rounded up to one of a few sizes (``bucket_size``), one graph per size;
  padded slots get ``IGNORE_INDEX`` targets and add nothing to the loss or the gradients;
- no host syncs: the slot count is compared on the device (``padded_compact_index``) and the
  loss must be sync-free (``ce``, ``cce``'s default split forward; ``cce(forward="library")``
  calls ``nonzero()`` and fails at capture);
- static memory: gradients are set to None before each step (eager and captured), so the
  backward writes fresh gradient tensors, which in a capture come from the graphs' pool and
  stay at their addresses at every replay, where Adam (``capturable=True``: its step counter
  lives on the device) reads them. No memset of the gradients and no accumulating add per
  parameter (zeroing in place and adding into it cost 0.15 ms of a 1.56-ms beauty-like step on
  an H200, call C: 34 adds and the fills). A graph's gradients live only within its replay:
  nothing reads ``.grad`` between steps, and graphs of other buckets may reuse that memory.
The first batch of each size runs eagerly on a side stream (its real training step; it also
compiles kernels and allocates gradients and optimizer state), then the same step is
captured: capture records without executing, so no batch is trained twice.

Packed body (``SASRec.packed``, on by default; ``core.model``): a batch whose real positions
fill at most half its slots (``packs_batch``) runs the model on its real positions only, packed
into T slots (``model(inputs, pack=T)`` -> (T, D)), instead of on all B x L. A training
batch's real INPUT positions are exactly its real TARGET positions (one window shifted by
one, both left-padded), in the same row-major order, so the packed output
rows ARE the loss's compact block: no second gather, and the batch's ``Packing`` (built once,
``core.model.pack``) gives the targets' compaction as well. The eager step packs into
``packed_length(positions)`` slots and hands the first ``positions`` rows to the loss; the
graphed step packs into its bucket ``n_pad`` (rounded up to FlexAttention's 128-slot tile),
filler slots getting ``IGNORE_INDEX`` targets as before, and the block mask is built on the
device from tensors (``core.model.document_causal_block_mask``: sync-free, so it is captured
with the rest). On CUDA the attention is FlexAttention, compiled once per T; on the CPU an
exact padded-layout SDPA (``core.model.packed_attention``). Where the body stays padded: a
model with ``packed = False``, a ``train.compile``d body of the eager step (its one static
(B, L) shape is what it compiles for; the graphed step compiles ``forward_block`` per bucket,
packed or not) and a step with rank ``shares`` (data- and catalog-parallel runs: DDP wraps
the model and the sharded item lookup takes the padded batch; refused nowhere, just padded).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.data.batching import Batch, compact_index, padded_compact_index
from core.evaluation import autocast
from core.losses import IGNORE_INDEX
from core.losses.registry import filler_rows
from core.model import FLEX_BLOCK, pack
from core.parallel.shares import RankShares, ShardedBatch

# torch.compile modes of ``train.compile``; True means "default". "reduce-overhead" adds CUDA
# graphs (the model body only: the compact block's size changes every batch).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
# Modes that make no CUDA graphs of their own: the ones that compose with ``train.cuda_graph``
# (the whole step captured, the compiled body's kernels inside it).
GRAPHABLE_MODES = ("default", "max-autotune-no-cudagraphs")

# Graphed step, positions: the smallest size step. Every captured size keeps memory in the
# graphs' pool, so small batches share few, padded graphs. beauty-like CCE on an H200
# (bench_epoch, one call): min bucket 64 -> 7.18 s, 0.77 GiB; 256 -> 7.38 s, 0.64 GiB;
# 1024 -> 7.81 s, 0.48 GiB. beauty-like flash_ce, graph+compile (calls LL, MM, OO, 2026-12-03):
# 128 -> 1.88 s, 0.60 GiB; 256 -> 1.87 s, 0.54; 512 -> 1.99 s, 0.43; 1024 -> 2.00 s, 0.36.
MIN_BUCKET = 1024

_PROGRESS_REFRESH_S = 2.0  # the bar's loss costs one device sync per refresh


class GraphCaptureError(RuntimeError):
    """The step could not be captured (e.g. a loss that syncs with the host)."""


def compile_mode(compile: bool | str | None) -> str | None:
    """``train.compile`` -> a torch.compile mode, or None for eager."""
    if compile is False or compile is None:
        return None
    mode = "default" if compile is True else compile
    if mode not in COMPILE_MODES:
        raise ValueError(f"train.compile must be True, False or one of {COMPILE_MODES}, got {compile!r}")
    return mode


@dataclass(frozen=True)
class StepSettings:
    """How the step runs; what it computes is the same for every setting.

    - ``amp``: bf16 autocast on CUDA (the CPU always runs fp32).
    - ``compile``: torch.compile the model body (True or a mode of ``COMPILE_MODES``); the
      last, smaller batch is padded to keep one shape.
    - ``cuda_graph``: the whole step as CUDA graphs, one per bucket of positions (CUDA only;
      elsewhere the eager step runs, with a warning). With ``compile`` (a mode of
      ``GRAPHABLE_MODES``: no CUDA graphs of its own) the graphs capture the compiled body:
      the compaction, the packing and the model (``forward_block``) compiled once per bucket,
      their fused kernels replayed with the loss, backward and Adam.
    - ``graph_min_bucket``: the graphed step's smallest bucket (fewer, larger = less memory).
    """

    amp: bool = True
    compile: bool | str = False
    cuda_graph: bool = False
    graph_min_bucket: int = MIN_BUCKET

    def __post_init__(self):
        mode = compile_mode(self.compile)
        if self.cuda_graph and mode not in (None, *GRAPHABLE_MODES):
            raise ValueError(f"train.compile = {self.compile!r} makes CUDA graphs of its own, which "
                             f"train.cuda_graph (the whole step captured) cannot contain: use one of "
                             f"{GRAPHABLE_MODES} with it")
        if self.graph_min_bucket < 1:
            raise ValueError(f"graph_min_bucket must be >= 1, got {self.graph_min_bucket}")


@dataclass
class Step:
    """``step(inputs, targets, positions, *, shares=None) -> loss`` (a device scalar: no sync)
    and the optimizer it updates (checkpoints save its state). ``kind`` names the variant.
    ``shares``: a rank's share of a global batch brings every rank's share sizes
    (``core.parallel.shares.RankShares``); the step passes them to the model and the loss as
    the keyword ``shares`` (``core.training.ranks.Ranks`` builds both to take it)."""

    run: Callable[..., torch.Tensor]
    optimizer: torch.optim.Optimizer
    kind: str
    warning: str | None = None  # a setting that could not apply here (logged by the loop)
    packed: bool = False  # the body runs on packed real positions (steps with rank shares: padded)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, positions: int, *,
                 shares: RankShares | None = None) -> torch.Tensor:
        return self.run(inputs, targets, positions, shares)

    def on(self, batch: Batch | ShardedBatch) -> torch.Tensor:
        """The step on ``batch``: a ``Batch``, or a rank's ``ShardedBatch`` with its shares."""
        shares = batch.shares if isinstance(batch, ShardedBatch) else None
        return self.run(batch.inputs, batch.targets, batch.positions, shares)


def make_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float,
                   capturable: bool = False) -> torch.optim.Optimizer:
    """Adam, the same for every loss: fused on CUDA (one kernel for all parameters), foreach
    elsewhere. ``capturable``: step counters on the device, as a CUDA-graphed step needs."""
    on_cuda = next(model.parameters()).is_cuda
    kind = {"fused": True, "capturable": capturable} if on_cuda else {"foreach": True}
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, **kind)


def ties(model: torch.nn.Module) -> bool:
    """Whether the step takes the catalog from the model's forward (``with_catalog``: the
    lookup and the catalog as one autograd node, one gradient buffer for the item table;
    ``core.model.TiedItemTable``): a model holding its whole table as a plain ``nn.Embedding``
    (padding row 0, no max_norm, dense gradients: what ``TiedItemTable`` reproduces). A wrapper
    (DDP) or a rank's sharded table does not, and stays on ``catalog()``."""
    table = getattr(model, "item_emb", None)
    return (isinstance(table, torch.nn.Embedding) and table.padding_idx == 0 and table.max_norm is None
            and not table.sparse)


def forward_and_catalog(forward: Callable, model: torch.nn.Module, inputs: torch.Tensor, tied: bool,
                        **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(``forward(inputs, **kw)``, the catalog): from one node when ``tied`` (``ties``)."""
    if tied:
        return forward(inputs, with_catalog=True, **kw)
    return forward(inputs, **kw), model.catalog()


def packs(model: torch.nn.Module) -> bool:
    """Whether the step runs ``model``'s body packed: a model that says so (``SASRec.packed``).
    A wrapper (DDP, under torchrun) does not answer ``packed``, so ranks stay padded."""
    return bool(getattr(model, "packed", False))


def make_step(model: torch.nn.Module, loss_fn: Callable, *, lr: float, weight_decay: float,
              settings: StepSettings, batch_size: int, max_len: int) -> Step:
    """The step for ``settings`` on the model's device, with its Adam optimizer. The body runs
    packed when the model asks for it (``packs``), except under ``train.compile``."""
    device = next(model.parameters()).device
    amp = settings.amp and device.type == "cuda"
    graphed = settings.cuda_graph and device.type == "cuda"
    warning = None
    if settings.cuda_graph and not graphed:
        warning = f"train.cuda_graph: no CUDA device ({device}), running the eager step"
    optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay, capturable=graphed)
    mode = compile_mode(settings.compile)
    if graphed:
        block = forward_block if mode is None else compiled_forward_block(mode)
        run = _graph_step(model, optimizer, loss_fn, amp=amp, batch_size=batch_size,
                          max_len=max_len, min_bucket=settings.graph_min_bucket, packed=packs(model),
                          block=block)
        body = "" if mode is None else f", compiled body ({mode})"
        return Step(run, optimizer, f"whole-step CUDA graphs (min bucket {settings.graph_min_bucket}{body})",
                    packed=packs(model))
    # dynamic=False: every batch is padded to batch_size rows, so one graph serves the run.
    forward = model if mode is None else torch.compile(model, mode=mode, dynamic=False)
    packed = packs(model) and mode is None  # a compiled body keeps its one (B, L) shape
    run = _eager_step(model, forward, optimizer, loss_fn, amp=amp,
                      pad_to=batch_size if mode else None, cudagraphs=mode == "reduce-overhead",
                      packed=packed, min_bucket=settings.graph_min_bucket,
                      # the compiled body keeps catalog(): the tied lookup's graph break is not
                      # tried under reduce-overhead's CUDA-graph trees
                      tied=ties(model) and mode is None)
    return Step(run, optimizer, "eager" if mode is None else f"compiled body ({mode})", warning, packed)


# --- compaction sizes ---------------------------------------------------------------------


def bucket_size(positions: int, min_bucket: int = MIN_BUCKET) -> int:
    """``positions`` rounded up to a multiple of 1/16 of the next power of two (and of
    ``min_bucket``): at most 12.5% padding, at most 8 graphs per doubling of the batch size."""
    step = max(min_bucket, (1 << max(positions - 1, 1).bit_length()) // 16)
    return max(step, -(-positions // step) * step)


# A batch is packed only when its real positions fill at most this share of its B x L slots.
# Measured on an H200 (call C, 2026-12-02, graphed flash_ce step): beauty-like (~5% filled)
# packed 4.35 s vs padded 5.54 s an epoch; ml20m-like (~90-100% filled) packed 1.24 s and
# 0.48 GiB vs padded 1.14 s and 0.37 GiB: with full rows packing saves nothing and adds the
# block mask, FlexAttention and the gathers. The cut between them (one half) is not measured.
PACK_MAX_FILL = 0.5


def packs_batch(positions: int, slots: int) -> bool:
    """Whether a batch with ``positions`` real positions in ``slots`` (B x L) runs packed."""
    return positions <= PACK_MAX_FILL * slots


def packed_length(positions: int, min_bucket: int = MIN_BUCKET) -> int:
    """A packed block's length for ``positions`` real positions: ``bucket_size`` rounded up to
    FlexAttention's tile (``FLEX_BLOCK``; a no-op for buckets of 1024 and more). A few lengths
    per run: one compiled attention kernel (and one graph) each."""
    return -(-bucket_size(positions, min_bucket) // FLEX_BLOCK) * FLEX_BLOCK


# --- eager (optionally compiled body) ---------------------------------------------------------


def _eager_step(model, forward, optimizer, loss_fn, *, amp: bool, pad_to: int | None,
                cudagraphs: bool, packed: bool = False, min_bucket: int = MIN_BUCKET,
                tied: bool = False) -> Callable[..., torch.Tensor]:
    """The eager step. ``pad_to`` pads a smaller (last) batch with empty rows so a compiled
    body sees one shape: empty rows have no targets and SASRec's rows never interact, so loss
    and gradients are the unpadded batch's (only dropout draws differ). ``cudagraphs`` tells
    CUDA-graph trees where each step begins (``reduce-overhead``). ``packed``: the body runs on
    the real positions (one process only; a step with ``shares`` stays padded), packed into
    ``packed_length(positions, min_bucket)`` slots on CUDA (a few lengths: one compiled
    attention kernel each) and exactly ``positions`` on the CPU; the loss takes the first
    ``positions`` rows. ``tied``: the catalog comes from the forward (``forward_and_catalog``;
    steps with ``shares`` use ``catalog()``)."""
    device = next(model.parameters()).device

    def step(inputs, targets, positions, shares=None):
        extra = {} if shares is None else {"shares": shares}  # K ranks: for the model and the loss
        if pad_to is not None and inputs.shape[0] < pad_to:
            rows = (0, 0, 0, pad_to - inputs.shape[0])  # (B, L) -> (pad_to, L), zeros = padding
            inputs, targets = F.pad(inputs, rows), F.pad(targets, rows)
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, amp):
            if packed and shares is None and packs_batch(positions, inputs.numel()):
                length = packed_length(positions, min_bucket) if device.type == "cuda" else max(positions, 1)
                packing = pack(inputs, length)  # its first ``positions`` slots: the targets' positions
                index = packing.index[:positions]
                out, catalog = forward_and_catalog(forward, model, inputs, tied, pack=packing)
                e = out[:positions]  # (N, D): the same positions, in order
            else:
                index = compact_index(targets != 0, positions)  # (N,): positions with a real next item
                hidden, catalog = forward_and_catalog(forward, model, inputs, tied and shares is None, **extra)
                e = hidden.flatten(0, 1).index_select(0, index)  # (B, L, D) -> (N, D)
            t = targets.flatten().index_select(0, index)  # (N,)
            loss = loss_fn(e, catalog, t - 1, **extra)  # catalog column = item id - 1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


# --- whole step as CUDA graphs ----------------------------------------------------------------


def forward_block(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, n_pad: int,
                  packed: bool, tied: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The graphed step's forward up to the loss: (e (n_pad, D), the catalog, catalog columns
    (n_pad,)), the scored positions first, then filler slots with ``IGNORE_INDEX``. ``packed``:
    the body runs on the real positions packed into the ``n_pad`` slots (a multiple of
    ``FLEX_BLOCK`` on CUDA: ``packed_length``), whose output is the loss's block; else on all
    B x L, then gathered. ``tied``: the catalog from the forward where the model ``ties``."""
    tied = tied and ties(model)
    if packed:
        packing = pack(inputs, n_pad)
        index, valid = packing.index, packing.valid  # (n_pad,), (n_pad,)
        # (n_pad, D): real positions in ``index``'s order, then filler
        e, catalog = forward_and_catalog(model, model, inputs, tied, pack=packing)
    else:
        index, valid = padded_compact_index(targets != 0, n_pad)  # (n_pad,), (n_pad,)
        hidden, catalog = forward_and_catalog(model, model, inputs, tied)
        e = hidden.flatten(0, 1).index_select(0, index)  # (B, L, D) -> (n_pad, D)
    return e, catalog, torch.where(valid, targets.flatten().index_select(0, index) - 1, IGNORE_INDEX)


# Inductor settings of the compiled body, on top of its mode's. ``combo_kernels``: independent
# small kernels (the weights' bf16 casts, the bias-gradient sums, ...) launched as one. Measured
# on one H200 (call HH, 2026-12-03, beauty-like graph+compile, min bucket 128, one call): device
# activities a step 140 -> 99, GPU time a step 0.706 -> 0.667 ms, epoch 1.98 -> 1.86 s. Quality
# with it and the graphed step's GPU tests are not run yet (NOTES_speed, "Twelfth session");
# ``INDUCTOR_OPTIONS.clear()`` before a compile goes back to the mode's settings alone.
INDUCTOR_OPTIONS = {"combo_kernels": True}


def compiled_forward_block(mode: str) -> Callable:
    """``forward_block`` under torch.compile (``mode`` of ``GRAPHABLE_MODES``), tied where the
    model ``ties``: the tied lookup (``core.model.tied_lookup``) is excluded from compilation, so
    Dynamo breaks the graph there and compiles the compaction and packing before it and the
    body after it, while ``TiedItemTable`` runs, forward and backward, in eager autograd (its
    backward takes the loss's dC buffer at run time, which a traced backward could not). One
    compile per (bucket, packed) - ints are guarded on - so the recompile limit is raised to
    64 as for FlexAttention (``core.model.compiled_flex_attention``)."""
    import torch._dynamo
    from torch._inductor import list_mode_options

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(forward_block, dynamic=False, options={**list_mode_options(mode), **INDUCTOR_OPTIONS})


def step_body(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, *,
              inputs: torch.Tensor, targets: torch.Tensor, n_pad: int, amp: bool,
              packed: bool = False, block: Callable = forward_block) -> torch.Tensor:
    """One step on fixed-shape tensors: forward (``block``: ``forward_block`` or its compiled
    version), loss on ``n_pad`` slots, backward, Adam."""
    # Fresh gradients each step (module docstring): no memset, no accumulating add; captured,
    # they are the graph's own pool memory, rewritten at each replay.
    optimizer.zero_grad(set_to_none=True)
    # cache_enabled=False: autocast's weight-cast cache must not outlive a captured region.
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
        e, catalog, t = block(model, inputs, targets, n_pad, packed)
        loss = loss_fn(e, catalog, t)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _graph_step(model, optimizer, loss_fn, *, amp: bool, batch_size: int, max_len: int,
                min_bucket: int, packed: bool = False,
                block: Callable = forward_block) -> Callable[..., torch.Tensor]:
    """The step replayed as CUDA graphs (one per bucket of positions, captured on first use).
    ``optimizer`` must be Adam with ``capturable=True``. ``packed``: the body on the real
    positions, the buckets rounded up to FlexAttention's tile (``packed_length``). ``block``:
    ``forward_block`` or its compiled version (compiled by the eager run before each capture)."""
    device = next(model.parameters()).device
    static_inputs = torch.zeros((batch_size, max_len), dtype=torch.int64, device=device)
    static_targets = torch.zeros_like(static_inputs)
    graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
    pool = torch.cuda.graph_pool_handle()  # one memory pool: graphs replay one at a time

    def body(n_pad: int, pack: bool) -> torch.Tensor:
        with filler_rows(pack):  # a packed bucket pads ~560 real rows to 640-1,024 (flash_ce skips them)
            return step_body(model, optimizer, loss_fn, inputs=static_inputs, targets=static_targets,
                             n_pad=n_pad, amp=amp, packed=pack, block=block)

    def capture(n_pad: int, pack: bool) -> torch.Tensor:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            loss = body(n_pad, pack)  # this batch's real step, run eagerly
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=pool):
                out = body(n_pad, pack)
        except RuntimeError as err:
            raise GraphCaptureError(
                "cuda_graph: the training step could not be captured (a host sync in the loss? "
                f"ce and cce's default split forward are sync-free): {str(err).splitlines()[0]}"
            ) from err
        graphs[n_pad, pack] = (graph, out)
        return loss

    def step(inputs, targets, positions, shares=None):
        if shares is not None:
            raise ValueError("the CUDA-graphed step runs in one process (no rank shares)")
        rows = inputs.shape[0]
        static_inputs[:rows].copy_(inputs)
        static_targets[:rows].copy_(targets)
        if rows < batch_size:  # the last, smaller batch: empty rows have no targets
            static_inputs[rows:].zero_()
            static_targets[rows:].zero_()
        pack = packed and packs_batch(positions, static_inputs.numel())
        n_pad = (packed_length if pack else bucket_size)(positions, min_bucket)
        if (n_pad, pack) in graphs:
            graph, out = graphs[n_pad, pack]
            graph.replay()
            loss = out.clone()  # ``out`` is overwritten by the next replay
        else:
            loss = capture(n_pad, pack)
        return loss

    return step


# --- one epoch ------------------------------------------------------------------------------


def run_epoch(step: Step, batches: Iterable[Batch | ShardedBatch], *, device: torch.device,
              nan_check_every: int = 0, progress: tqdm | None = None) -> tuple[float, int]:
    """One pass of ``step`` over ``batches`` -> (mean batch loss, steps).

    No host sync inside the epoch (the loss sum stays on the device) except the optional NaN
    check every ``nan_check_every`` steps (then it returns early with a NaN loss) and the
    progress bar's loss, refreshed at most every couple of seconds and only when a bar is shown.
    """
    loss_sum = torch.zeros((), device=device)
    steps = 0
    last_refresh = time.perf_counter()
    for batch in batches:
        loss_sum += step.on(batch)
        steps += 1
        if nan_check_every and steps % nan_check_every == 0 and not torch.isfinite(loss_sum):
            return float("nan"), steps
        if progress is not None:
            progress.update(batch.inputs.shape[0])
            if not progress.disable and time.perf_counter() - last_refresh > _PROGRESS_REFRESH_S:
                progress.set_postfix(loss=f"{loss_sum.item() / steps:.4f}", refresh=False)
                last_refresh = time.perf_counter()
    return (loss_sum / max(steps, 1)).item(), steps
