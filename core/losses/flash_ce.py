"""``flash_ce``: the project's own linear cross-entropy kernel, shaped for a catalog.

The loss is attention-shaped (hidden states E (N, D) are queries, the catalog C (V, D) keys), so
it is computed the way flash attention computes attention, tuned for what a recommender has:
D in 32..256 and a catalog of 10^4..10^6 items scored by a few hundred to tens of thousands of
positions. Never materializes (N, V): the forward is a lock-free online log-sum-exp split over the
catalog, by the kernel ``cce``'s split forward runs too (core/losses/split_lse.py); the backward
recomputes the logits in two kernels, one per gradient (core/losses/kernels/flash_ce.py):

- dE: program per (row block, catalog slice), fp32 partials (slices, N, D) summed afterwards;
- dC: program per catalog tile, looping over every row block, each dC row written once (with
  few catalog tiles and many rows, the rows are cut into slices too, fp32 partials summed).

How it differs from Apple's CCE (``cce``): exact gradients always (no gradient filter, no
vocabulary sort), dE accumulated in fp32 (CCE's backward accumulates it in the operand dtype
across every catalog tile), no locks or atomics anywhere (so reruns are bit-identical: there is no
separate deterministic mode), the catalog split in the backward as well as the forward, and tile
sizes chosen for D <= 256 instead of language-model hidden sizes.

Extra memory besides dE and dC: O(N) (LSE, weights) plus the partials, at most
``SPLITS_PER_SM * SMs`` slices (core/losses/split_lse.py) of N fp32 LSEs and dE / dC partials capped at ``_MAX_PARTIAL_BYTES``.
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

import torch

from core.losses.cce import autocast_operands
from core.losses.registry import IGNORE_INDEX, LossFacts, register, warn_once
from core.losses.split_lse import split_lse, splits

log = logging.getLogger(__name__)
_MAX_PARTIAL_BYTES = 64 * 2**20  # the fp32 dE (slices, N, D) and dC (slices, V, D) partials stay below this

# Tile sizes (BLOCK_N, BLOCK_V, num_warps, num_stages) per kernel, per padded head dim and per
# number of rows ("few": N <= 2,048, "many" above). Measured 2026-11-29 on one NVIDIA H200
# (torch 2.11.0, Triton 3.6.0), bf16, V = 207,649, N = 560 / 12,800, by
# `python kernels_bench/tune_flash_ce.py --dims 64,128,256` (fastest of 40 candidates per kernel
# at D = 64, 24 at D = 128 and 256; results/flash_ce_h200/tuning). D <= 32 was not searched: it
# uses D = 64's table.
_TILES = {
    #      kernel: (few rows,          many rows)
    64: {"lse": ((128, 64, 4, 3), (128, 64, 4, 3)),
         "de": ((128, 64, 8, 3), (128, 32, 4, 3)),
         "dc": ((64, 128, 4, 3), (64, 128, 4, 3))},
    128: {"lse": ((128, 64, 4, 3), (128, 128, 8, 2)),
          "de": ((64, 128, 4, 3), (128, 64, 8, 3)),
          "dc": ((32, 64, 4, 3), (64, 64, 4, 3))},
    256: {"lse": ((128, 64, 8, 3), (128, 64, 8, 3)),
          "de": ((128, 64, 8, 3), (128, 64, 8, 3)),
          "dc": ((64, 64, 4, 2), (64, 64, 4, 2))},
}
_TILES[32] = _TILES[64]
_FEW_ROWS = 2048


def _block_d(d: int) -> int:
    """The head dim padded to a power of two (tl.dot needs at least 16)."""
    return max(16, 1 << (d - 1).bit_length())


def tiles(kernel: str, n: int, d: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_V, num_warps, num_stages) of ``kernel`` ("lse", "de", "dc") at (N, D)."""
    block_d = _block_d(d)
    if block_d > 256:
        raise ValueError(f"flash_ce: D = {d} > 256 is not supported (tiles hold a whole row)")
    return _TILES[max(32, block_d)][kernel][0 if n <= _FEW_ROWS else 1]


def _precision(e: torch.Tensor) -> str:
    return "ieee" if e.dtype == torch.float32 else "tf32"  # tf32 is unused for 16-bit operands


def lse_forward(e: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N,) fp32 row log-sum-exp of ``e @ c.T`` (``e``, ``c`` contiguous), never materialized."""
    block_n, block_v, warps, stages = tiles("lse", e.shape[0], e.shape[1])
    return split_lse(e, c, block_n=block_n, block_v=block_v, block_d=_block_d(e.shape[1]), base2=True,
                     num_warps=warps, num_stages=stages)


def grad_e(e, c, lse, w, scale, targets) -> torch.Tensor:
    """dE (N, D) in ``e``'s dtype: sum over items of (softmax - onehot) * w * scale, times C."""
    from core.losses.kernels import flash_ce as kernels

    (n, d), v = e.shape, c.shape[0]
    if n == 0:
        return torch.empty_like(e)
    block_n, block_v, warps, stages = tiles("de", n, d)
    block_d = _block_d(d)
    n_blocks = -(-n // block_n)
    cap = max(1, _MAX_PARTIAL_BYTES // (n * block_d * 4))
    n_splits, per_split = splits(-(-v // block_v), n_blocks, e.device, cap)
    part = torch.empty((n_splits, n, block_d), dtype=torch.float32, device=e.device)
    kernels._de_kernel[(n_blocks, n_splits)](
        e, c, lse, w, scale, targets, part, n, v, d, e.stride(0), c.stride(0), per_split,
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_D=block_d, PRECISION=_precision(e),
        num_warps=warps, num_stages=stages,
    )
    de = part.sum(0) if n_splits > 1 else part[0]  # (N, BLOCK_D) fp32
    return de[:, :d].to(e.dtype)


def grad_c(e, c, lse, w, scale, targets) -> torch.Tensor:
    """dC (V, D) in ``c``'s dtype: sum over rows of (softmax - onehot)^T * w * scale, times E."""
    from core.losses.kernels import flash_ce as kernels

    (n, d), v = e.shape, c.shape[0]
    block_n, block_v, warps, stages = tiles("dc", n, d)
    block_d = _block_d(d)
    v_tiles = -(-v // block_v)
    # Row slices only where catalog tiles alone leave the GPU idle (small catalogs, many rows).
    cap = max(1, _MAX_PARTIAL_BYTES // (v * block_d * 4))
    row_splits, blocks_per_split = splits(max(1, -(-n // block_n)), v_tiles, e.device, cap)
    if row_splits == 1:
        out = dc = torch.empty_like(c)
        strides = (0, dc.stride(0))
    else:
        out = torch.empty((row_splits, v, block_d), dtype=torch.float32, device=e.device)
        strides = out.stride()[:2]
    kernels._dc_kernel[(v_tiles, row_splits)](
        e, c, lse, w, scale, targets, out, n, v, d, e.stride(0), c.stride(0), *strides,
        blocks_per_split * block_n,
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_D=block_d, PRECISION=_precision(e),
        num_warps=warps, num_stages=stages,
    )
    if row_splits > 1:
        dc = out.sum(0)[:, :d].to(c.dtype)
    return dc


class FlashCE(torch.autograd.Function):
    """Mean NLL over rows with a target; both passes by the kernels above."""

    @staticmethod
    def forward(ctx, e, c, targets):
        valid = targets != IGNORE_INDEX  # (N,)
        safe = torch.where(valid, targets, 0)  # any real item: its row's weight is 0
        lse = lse_forward(e, c)  # (N,) fp32
        # The target logit as the kernels see it: operands rounded to e's dtype, fp32 sum.
        dot = (e.float() * c.index_select(0, safe).to(e.dtype).float()).sum(-1)  # (N,)
        count = valid.sum()  # stays on the device: no host sync
        ctx.save_for_backward(e, c, lse, safe, valid, count)
        # 0 / 0 = NaN with no scored target, as F.cross_entropy's mean.
        return torch.where(valid, lse - dot, 0.0).sum() / count

    @staticmethod
    def backward(ctx, grad):
        e, c, lse, safe, valid, count = ctx.saved_tensors
        # Every scored row has the weight grad / count. The kernels get 2**15 for those rows (0 for
        # ignored ones) and multiply their accumulators by scale = grad / count / 2**15: rounded P
        # entries then stay clear of fp16's subnormals (1/V times 1/N is below fp16's smallest
        # normal at V = 207,649, N = 560).
        w = torch.where(valid, 2.0**15, 0.0)  # (N,) fp32
        scale = (grad.float() / (count.clamp(min=1) * 2**15)).contiguous()  # () fp32
        de = grad_e(e, c, lse, w, scale, safe) if ctx.needs_input_grad[0] else None
        dc = grad_c(e, c, lse, w, scale, safe) if ctx.needs_input_grad[1] else None
        return de, dc, None


def flash_linear_ce(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The kernels' loss for ``e`` (N, D) bf16/fp16/fp32 and ``c`` (V, D) (cast per tile to
    ``e``'s dtype); CUDA tensors, or CPU ones under ``TRITON_INTERPRET=1``."""
    if e.ndim != 2 or c.ndim != 2 or e.shape[1] != c.shape[1] or targets.shape != e.shape[:1]:
        raise ValueError(f"flash_ce: need e (N, D), c (V, D), targets (N,); got "
                         f"{tuple(e.shape)}, {tuple(c.shape)}, {tuple(targets.shape)}")
    if c.shape[0] == 0:
        raise ValueError("flash_ce: empty catalog (V = 0)")
    tiles("lse", e.shape[0], e.shape[1])  # refuses D > 256 before any launch
    return FlashCE.apply(e.contiguous(), c.contiguous(), targets.contiguous())


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
