"""``flash_ce``: the project's own linear cross-entropy kernel, shaped for a catalog.

The loss is attention-shaped (hidden states E (N, D) are queries, the catalog C (V, D) keys), so
it is computed the way flash attention computes attention, tuned for what a recommender has:
D in 32..256 and a catalog of 10^4..10^6 items scored by a few hundred to tens of thousands of
positions. Never materializes (N, V). The forward is flash attention's forward with the catalog
as keys and values, split over the catalog without locks: per (row block, catalog slice) the
slice's log-sum-exp and its softmax times C; one small kernel merges the slices' LSEs and takes
the target logits, the count and the loss sums, and a one-program kernel the mean. dE is then
(softmax C - C[target]) * grad / count: one small kernel merges the slices' softmax C, with no
second pass over the catalog (this replaced a backward kernel that recomputed the logits for
dE; measured in experiments/bench/NOTES_speed.md, tenth session). dC recomputes the logits
(core/losses/kernels/flash_ce.py): program per catalog tile, looping over every row block, each
dC row written once (with few catalog tiles and many rows, the rows are cut into slices too,
fp32 partials summed).

Per call, nothing but allocations and kernel launches (issue 21.4: eager calls were host-bound):
forward 3 launches, backward 2 (dE, dC), the loss weights and the upstream gradient's scale
read from device memory inside the kernels. Launch parameters are computed once per shape
(``_Plan``); transient buffers (the loss sums, dC partials) are reused across calls
(``_workspace``); what the backward needs (each row's LSE and the count, the slices' partial
LSEs and softmax C) is allocated per call, so losses built before either backward keep their own.

How it differs from Apple's CCE (``cce``): exact gradients always (no gradient filter, no
vocabulary sort), dE accumulated in fp32 (CCE's backward accumulates it in the operand dtype
across every catalog tile), no locks or atomics anywhere (so reruns are bit-identical: there is no
separate deterministic mode), the catalog split in the backward as well as the forward, and tile
sizes chosen for D <= 256 instead of language-model hidden sizes.

Extra memory besides dE and dC: O(N) (the LSEs) plus the partials: the forward's S slices
(``SPLITS_PER_SM * SMs`` programs, core/losses/split_lse.py) of N fp32 LSEs and N x D softmax C,
held from the forward to the backward, and dC's, both capped at ``_MAX_PARTIAL_BYTES``; dC's
buffer stays allocated between calls (one per stream and thread, grown to the largest shape seen).
No host sync: nothing data-dependent reaches the host, so a training step using it can be
captured as a CUDA graph. Ignored targets (``IGNORE_INDEX``) count for nothing; with no
scored target at all the loss is NaN and the gradients zero, exactly as ``ce``'s.

Off CUDA the kernels run only under the Triton interpreter (``TRITON_INTERPRET=1``, how the tests
check them on a CPU); otherwise ``flash_ce`` falls back to plain ``ce`` (materialized logits,
same loss and gradients), logged once, so every config still runs on any machine.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict

import torch

from core.losses.cce import autocast_operands
from core.losses.registry import LossFacts, expects_filler_rows, register, warn_once
from core.losses.split_lse import split_lse, splits

log = logging.getLogger(__name__)
_MAX_PARTIAL_BYTES = 64 * 2**20  # the fp32 dE (slices, N, D) and dC (slices, V, D) partials stay below this

# Tile sizes (BLOCK_N, BLOCK_V, num_warps, num_stages) per kernel, per padded head dim and per
# number of rows ("few": N <= 2,048, "many" above). Measured 2026-11-29 on one NVIDIA H200
# (torch 2.11.0, Triton 3.6.0), bf16, V = 207,649, N = 560 / 12,800, by
# `python kernels_bench/tune_flash_ce.py --dims 64,128,256` (fastest of 40 candidates per kernel
# at D = 64, 24 at D = 128 and 256; results/flash_ce_h200/tuning). D <= 32 was not searched: it
# uses D = 64's table.
# "lse" is ``lse_forward``'s (the split LSE alone); "fwd" the loss's forward (LSE and softmax C):
# at D = 64 tuned on one H200 (2026-12-03, call AA, `tune_flash_ce.py --dims 64`, the kernels with
# the weight in the exponent, results/speed_h200_2026-12-02/call_aa: 0.107 ms at 560 x 207,649,
# 1.97 ms at 12,800 x 207,649; dC's tiles stayed the best of theirs);
# elsewhere not tuned: the old dE kernel's tiles at D = 128 (the same two matmuls per tile),
# (64, 64, 8, 2) at D = 256 (a 128 x 256 fp32 accumulator would not fit the registers).
_TILES = {
    #      kernel: (few rows,          many rows)
    64: {"lse": ((128, 64, 4, 3), (128, 64, 4, 3)),
         "fwd": ((64, 128, 4, 3), (64, 128, 4, 2)),
         "dc": ((64, 128, 4, 3), (64, 128, 4, 3))},
    128: {"lse": ((128, 64, 4, 3), (128, 128, 8, 2)),
          "fwd": ((64, 128, 4, 3), (128, 64, 8, 3)),
          "dc": ((32, 64, 4, 3), (64, 64, 4, 3))},
    256: {"lse": ((128, 64, 8, 3), (128, 64, 8, 3)),
          "fwd": ((64, 64, 8, 2), (64, 64, 8, 2)),
          "dc": ((64, 64, 4, 2), (64, 64, 4, 2))},
}
_TILES[32] = _TILES[64]
_FEW_ROWS = 2048
# Many rows against a small catalog (V <= _SMALL_CATALOG), D = 64: the backward tiles measured best
# at ml20m-like's shape (N = 12,800, V = 20,729) on one H200 (2026-12-02, call L,
# results/speed_h200_2026-12-02/call_l/tune_ml: `tune_flash_ce.py --dims 64 --vocab 20729 --regimes
# many`): dC 0.239 -> 0.204 ms. The cut between V = 20,729 (measured) and 207,649 (the table's)
# is not measured.
_SMALL_CATALOG = 65_536
_SMALL_CATALOG_TILES = {64: {"dc": (128, 128, 4, 3)}}


def _block_d(d: int) -> int:
    """The head dim padded to a power of two (tl.dot needs at least 16)."""
    return max(16, 1 << (d - 1).bit_length())


def tiles(kernel: str, n: int, d: int, v: int | None = None) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_V, num_warps, num_stages) of ``kernel`` ("lse", "fwd", "dc") at (N, D), and
    at a catalog of ``v`` items where that was measured to matter (``_SMALL_CATALOG_TILES``)."""
    block_d = _block_d(d)
    if block_d > 256:
        raise ValueError(f"flash_ce: D = {d} > 256 is not supported (tiles hold a whole row)")
    if v is not None and v <= _SMALL_CATALOG and n > _FEW_ROWS:
        small = _SMALL_CATALOG_TILES.get(block_d, {})
        if kernel in small:
            return small[kernel]
    return _TILES[max(32, block_d)][kernel][0 if n <= _FEW_ROWS else 1]


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 is unused for 16-bit operands


def _pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


# Row blocks with no scored row skip their catalog work (the kernels' ``SKIP_IGNORED``, module
# doc of core/losses/kernels/flash_ce.py): the filler rows of a graphed step's packed bucket.
# None (the default): on where the caller says its rows include filler
# (``core.losses.registry.filler_rows``: the graphed step's packed buckets), off elsewhere.
# Measured on one H200 (2026-12-02, experiments/bench/NOTES_speed.md, calls G and H): beauty-like
# graphed step (1,024-row bucket, ~560 scored) dC 0.246 -> 0.206 ms, dE 0.168 -> 0.156 ms, epoch
# 3.92 -> 3.75 s; but with every row scored the kernels are slower (their row loops end at a bound
# read from memory): ml20m-like dC 0.288 -> 0.364 ms; eager 560 x 207,649 (85% scored) dC 108 ->
# 148 us, dE 88 -> 108 us. ``FLASH_CE_SKIP_IGNORED=1`` / ``=0`` in the environment (read at
# import) forces it on / off everywhere; or set this before the first call at a shape.
SKIP_IGNORED_BLOCKS: bool | None = {"1": True, "0": False}.get(os.environ.get("FLASH_CE_SKIP_IGNORED", ""))


def skips_ignored() -> bool:
    """Whether a call here skips row blocks with no scored row."""
    return expects_filler_rows() if SKIP_IGNORED_BLOCKS is None else SKIP_IGNORED_BLOCKS


class _Plan:
    """Everything a call at one shape launches with, computed once per (device, dtypes, N, V, D,
    skip): grids, slice counts, tile sizes and workspace sizes. The per-call Python is then a
    dict lookup, the workspaces and the launches."""

    def __init__(self, device: torch.device, e_dtype: torch.dtype, n: int, v: int, d: int, skip: bool = False):
        self.n, self.v, self.d = n, v, d
        block_d = self.block_d = _block_d(d)
        precision = _precision(e_dtype)
        # Forward: LSE and softmax C per (row block, catalog slice), then the finish and the loss kernels.
        bn, bv, warps, stages = tiles("fwd", n, d)
        n_blocks = -(-n // bn)
        cap = max(1, _MAX_PARTIAL_BYTES // (max(1, n) * (d + 1) * 4))
        self.lse_splits, per_split = splits(-(-v // bv), max(1, n_blocks), device, cap)
        self.fwd_grid = (n_blocks, self.lse_splits)
        self.fwd_args = (n, v, d, d, d, per_split)
        self.fwd_meta = dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=block_d, PRECISION=precision, SKIP_IGNORED=skip,
                             num_warps=warps, num_stages=stages)
        self.part_size = self.lse_splits * n * (d + 1)  # (S, N) LSEs, then (S, N, D) softmax C
        fin_r = max(16, min(64, 4096 // block_d))  # rows per finish program: E and C tiles of 4,096 entries
        self.fin_blocks = -(-n // fin_r)
        self.fin_grid = (self.fin_blocks,)
        self.fin_meta = dict(BLOCK_R=fin_r, BLOCK_S=max(2, min(32, _pow2(self.lse_splits))), BLOCK_D=block_d,
                             SKIP_IGNORED=skip, num_warps=4)
        self.loss_meta = dict(BLOCK=max(16, min(1024, _pow2(self.fin_blocks))), SKIP_IGNORED=skip, num_warps=4)
        # Backward: dE (a merge per row block: tiles of ~2,048 partial entries), dC (catalog tile x row slice).
        de_s = max(2, min(16, _pow2(self.lse_splits)))
        de_r = max(2, 2048 // (de_s * block_d))
        self.de_grid = (-(-n // de_r),)
        self.de_meta = dict(BLOCK_R=de_r, BLOCK_S=de_s, BLOCK_D=block_d, num_warps=4)
        bn, bv, warps, stages = tiles("dc", n, d, v)
        v_tiles = -(-v // bv)
        # Row slices only where catalog tiles alone leave the GPU idle (small catalogs, many rows).
        cap = max(1, _MAX_PARTIAL_BYTES // (v * block_d * 4))
        self.dc_splits, blocks_per_split = splits(max(1, -(-n // bn)), v_tiles, device, cap)
        self.dc_grid = (v_tiles, self.dc_splits)
        self.dc_rows_per_split = blocks_per_split * bn
        self.dc_meta = dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=block_d, PRECISION=precision, SKIP_IGNORED=skip,
                            num_warps=warps, num_stages=stages)
        # Workspaces (fp32 entries): transient within one forward or one backward, never saved.
        self.sums_ws = (3 if skip else 2) * self.fin_blocks
        self.dc_ws = self.dc_splits * v * d if self.dc_splits > 1 else 0
        self.sum_dc = self._sum_meta(v, self.dc_splits, block_d)

    @staticmethod
    def _sum_meta(rows: int, n_splits: int, block_d: int):
        """(grid, meta) of ``_sum_cast_kernel``: tiles of ~2,048 partial entries, many programs."""
        block_s = max(2, min(16, _pow2(n_splits)))  # no size-1 block dims: >= 2 throughout
        block_r = max(2, 2048 // (block_s * block_d))
        return (-(-rows // block_r),), dict(BLOCK_S=block_s, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4)


_PLANS: dict = {}
_MAX_PLANS = 256  # shapes remembered (a few hundred bytes each); cleared whole beyond


def _plan(e: torch.Tensor, c: torch.Tensor) -> _Plan:
    key = (e.device, e.dtype, e.shape[0], c.shape[0], e.shape[1])
    skip = skips_ignored()
    plan = _PLANS.get((key, skip))
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[key, skip] = _Plan(e.device, e.dtype, e.shape[0], c.shape[0], e.shape[1], skip=skip)
    return plan


_WORKSPACES: OrderedDict = OrderedDict()
_MAX_WORKSPACES = 16  # (device, stream, thread, kind) buffers kept; least recently used dropped
# False: every call takes fresh buffers from the caching allocator instead. Whether reuse pays
# for its bookkeeping is not measured yet: ``kernels_bench/eager_point.py --fresh-workspaces``.
REUSE_WORKSPACES = True


def _workspace(device: torch.device, kind: str, numel: int) -> torch.Tensor:
    """A flat fp32 buffer of at least ``numel`` entries for transient use within one forward
    (``kind`` "sums") or one backward ("dc"), reused by later calls.

    Safe because every use is in stream order: one call's kernels write it and read it back
    before the next call's kernels (same stream, same thread) can touch it, and nothing saved
    for the backward lives in it (each call's LSE / count buffer, loss, dE and dC are fresh), so
    graphs built before either backward do not share state. Keyed by stream and thread (two
    streams or threads never share a buffer); while a CUDA graph is being captured a fresh
    buffer is taken from the graph's pool instead (free at replay), so a graph never shares one
    with eager calls or other graphs. Grows to the largest shape seen; memory stays bounded
    by ``_MAX_PARTIAL_BYTES`` per buffer.
    """
    if not REUSE_WORKSPACES:
        return torch.empty(max(numel, 1), dtype=torch.float32, device=device)
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return torch.empty(numel, dtype=torch.float32, device=device)
        stream = torch._C._cuda_getCurrentRawStream(device.index)
    else:
        stream = 0
    key = (device, stream, threading.get_ident(), kind)
    buf = _WORKSPACES.get(key)
    if buf is None or buf.numel() < numel:
        _WORKSPACES.pop(key, None)
        buf = torch.empty(max(numel, 1), dtype=torch.float32, device=device)
        _WORKSPACES[key] = buf
        while len(_WORKSPACES) > _MAX_WORKSPACES:
            _WORKSPACES.popitem(last=False)
    elif len(_WORKSPACES) > 1:
        _WORKSPACES.move_to_end(key)
    return buf


def forward_stats(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor,
                  plan: _Plan | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss (), stats (N + 2,), part) fp32: the mean NLL over scored rows; each row's LSE
    followed by the count of scored rows (and the end of the last scored row, written when the
    plan skips ignored blocks); and the slices' partial LSEs and softmax C, which the backward's
    dE merges. Three launches (forward, finish, loss), no torch op."""
    from core.losses.kernels import flash_ce as kernels

    plan = plan or _plan(e, c)
    n = plan.n
    stats = torch.empty(n + 2, dtype=torch.float32, device=e.device)
    part = torch.empty(plan.part_size, dtype=torch.float32, device=e.device)  # saved for dE: not a workspace
    loss = torch.empty((), dtype=torch.float32, device=e.device)
    sums = _workspace(e.device, "sums", plan.sums_ws)  # (2, finish blocks): loss sums, counts
    if n:
        kernels._forward_kernel[plan.fwd_grid](e, c, targets, part, *plan.fwd_args, **plan.fwd_meta)
        kernels._finish_kernel[plan.fin_grid](part, e, c, targets, stats, sums, n, plan.v, plan.d,
                                              plan.d, plan.d, plan.lse_splits, plan.fin_blocks,
                                              **plan.fin_meta)
    kernels._loss_kernel[(1,)](sums, stats, loss, n, plan.fin_blocks, **plan.loss_meta)
    return loss, stats, part


def lse_forward(e: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N,) fp32 row log-sum-exp of ``e @ c.T`` (``e``, ``c`` contiguous), never materialized:
    the split LSE kernel ``cce`` shares, at flash_ce's "lse" tiles, merged by ``torch.logsumexp``
    (``split_lse``'s launcher, which tests/test_split_lse.py holds bit for bit to the kernels
    before issue 20). The loss itself runs its own forward kernel (LSE and softmax C together)."""
    block_n, block_v, warps, stages = tiles("lse", e.shape[0], e.shape[1])
    return split_lse(e, c, block_n=block_n, block_v=block_v, block_d=_block_d(e.shape[1]), base2=True,
                     num_warps=warps, num_stages=stages)


def grad_e(e, c, stats, part, targets, grad, plan: _Plan | None = None) -> torch.Tensor:
    """dE (N, D) in ``e``'s dtype: (softmax C - C[target]) * grad / count, softmax C merged from
    ``part``. ``stats``, ``part``: ``forward_stats``' buffers; ``grad``: the loss's upstream
    gradient (()). One launch, no pass over the catalog."""
    from core.losses.kernels import flash_ce as kernels

    plan = plan or _plan(e, c)
    de = torch.empty_like(e)
    if plan.n:
        kernels._de_kernel[plan.de_grid](c, stats, part, grad, targets, de, plan.n, plan.v, plan.d, plan.d,
                                         plan.lse_splits, **plan.de_meta)
    return de


def grad_c(e, c, stats, targets, grad, plan: _Plan | None = None) -> torch.Tensor:
    """dC (V, D) in ``c``'s dtype: sum over rows of (softmax - onehot)^T * grad / count, times E.

    Returned as rows 1.. of a (V + 1, D) buffer (row 0 unset): a catalog that is rows 1.. of an
    item table (``core.model.TiedItemTable``) takes the buffer as the whole table's gradient,
    with no copy (``core.model.table_backed``); to anyone else it is a plain (V, D) tensor."""
    from core.losses.kernels import flash_ce as kernels

    plan = plan or _plan(e, c)
    dc = c.new_empty(plan.v + 1, plan.d)[1:]
    if plan.dc_splits == 1:
        out, strides = dc, (0, plan.d)
    else:
        out = _workspace(e.device, "dc", plan.dc_ws)
        strides = (plan.v * plan.d, plan.d)
    kernels._dc_kernel[plan.dc_grid](e, c, stats, grad, targets, out, plan.n, plan.v, plan.d, plan.d,
                                     plan.d, *strides, plan.dc_rows_per_split, **plan.dc_meta)
    if plan.dc_splits > 1:
        grid, meta = plan.sum_dc
        kernels._sum_cast_kernel[grid](out, dc, plan.v, plan.d, plan.dc_splits, strides[0], plan.d, **meta)
    return dc


class FlashCE(torch.autograd.Function):
    """Mean NLL over rows with a target; both passes by the kernels above.

    Per call: forward = 3 allocations (stats, partials, loss) from the caching allocator + 3
    launches; backward = 2 allocations (dE, dC) + 2 launches (dE, dC; 3 with dC's row slices).
    No torch op between them and no host sync."""

    @staticmethod
    def forward(ctx, e, c, targets, plan):
        loss, stats, part = forward_stats(e, c, targets, plan)
        ctx.plan = plan
        ctx.save_for_backward(e, c, stats, part, targets)
        return loss

    @staticmethod
    def backward(ctx, grad):
        # grad / count is applied inside the kernels (module doc of core/losses/kernels/flash_ce.py).
        e, c, stats, part, targets = ctx.saved_tensors
        plan = ctx.plan
        grad = grad.contiguous()
        de = grad_e(e, c, stats, part, targets, grad, plan) if ctx.needs_input_grad[0] else None
        dc = grad_c(e, c, stats, targets, grad, plan) if ctx.needs_input_grad[1] else None
        return de, dc, None, None


def flash_linear_ce(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The kernels' loss for ``e`` (N, D) bf16/fp16/fp32 and ``c`` (V, D) (cast per tile to
    ``e``'s dtype); CUDA tensors, or CPU ones under ``TRITON_INTERPRET=1``."""
    if e.ndim != 2 or c.ndim != 2 or e.shape[1] != c.shape[1] or targets.shape != e.shape[:1]:
        raise ValueError(f"flash_ce: need e (N, D), c (V, D), targets (N,); got "
                         f"{tuple(e.shape)}, {tuple(c.shape)}, {tuple(targets.shape)}")
    if c.shape[0] == 0:
        raise ValueError("flash_ce: empty catalog (V = 0)")
    plan = _plan(e, c)  # refuses D > 256 (``tiles``) before any launch
    return FlashCE.apply(e.contiguous(), c.contiguous(), targets.contiguous(), plan)


def _kernels_run_here(e: torch.Tensor) -> bool:
    return e.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


@register(facts=LossFacts(exact=True, sync_free=True, cuda_only=True, catalog_parallel=False),
          stand_in=lambda settings: None if os.environ.get("TRITON_INTERPRET") == "1" else "ce")
def flash_ce(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The project's catalog-shaped linear cross-entropy (exact gradients, see the module doc).

    Under autocast only ``e`` is cast (``autocast_operands``): the kernels cast catalog tiles as
    they load them, so an fp32 catalog is never copied and its gradient comes back in fp32.
    """
    if _kernels_run_here(e):
        return flash_linear_ce(autocast_operands(e, e)[0], c, targets)
    from core.losses.ce import ce

    warn_once(log, "flash_ce: no CUDA device, running plain softmax cross-entropy instead "
               "(same loss and gradients, materialized logits)")
    return ce(*autocast_operands(e, c), targets)
