"""The split log-sum-exp forward kernel shared by ``flash_ce`` and ``cce``'s split forward.

Program (row block, catalog slice): an online log-sum-exp (running max and sum of exp, as in
flash attention) of its rows of ``E C^T`` over its slice's tiles, one partial LSE per (slice,
row), merged by ``torch.logsumexp`` in the launcher (core/losses/split_lse.py). No locks, no
atomics: the catalog is cut into slices instead of rows being merged under a lock.

Two switches, compile-time constants chosen by each caller, keep each one's arithmetic as it
was when they had a kernel each (outputs bit for bit; tests/test_split_lse.py):
- ``D_CHUNKS``: 1 loads a row block of ``E`` once (``BLOCK_D`` covers D: flash_ce, cce at
  D <= 64); more accumulate each tile's logits over D in ``BLOCK_D``-wide chunks (cce at D > 64).
- ``BASE2``: exponentials as ``exp2`` of logits pre-scaled by log2(e) (flash_ce: the hardware
  has exp2, one fused multiply-add per logit) or as ``exp`` / ``log`` (cce).
- ``SKIP_IGNORED``: a row block none of whose rows has a target (``T`` = ``IGNORE_INDEX`` for
  all) skips its tiles and leaves -inf partials (flash_ce's filler rows; ``False``: ``T`` unread).
Operands: ``E`` bf16/fp16/fp32, ``C`` any float dtype cast to ``E``'s per tile; fp32 logits.
"""

from __future__ import annotations

import triton
import triton.language as tl

from core.losses.registry import IGNORE_INDEX as _IGNORE_INDEX

IGNORE = tl.constexpr(_IGNORE_INDEX)
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def split_lse_kernel(
    E, C, T, PartLSE, N, V, D, stride_e, stride_c, tiles_per_split,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, D_CHUNKS: tl.constexpr,
    BASE2: tl.constexpr, PRECISION: tl.constexpr, SKIP_IGNORED: tl.constexpr,
):
    """Program (row block, slice): PartLSE[slice, rows] = log sum over the slice's items of exp(logit)."""
    pid_n, pid_s = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    if SKIP_IGNORED:  # no row of the block has a target: no tile (its partials stay -inf)
        tgt = tl.load(T + offs_n, mask=n_mask, other=IGNORE)
        n_tiles = tl.where(tl.max((tgt != IGNORE).to(tl.int32), axis=0) > 0, tiles_per_split, 0)
    else:
        n_tiles = tiles_per_split
    offs_d = tl.arange(0, BLOCK_D)
    if D_CHUNKS == 1:  # the whole row fits one tile: load it once
        e = tl.load(E + offs_n[:, None].to(tl.int64) * stride_e + offs_d[None, :],
                    mask=n_mask[:, None] & (offs_d < D)[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
    run_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_N,), tl.float32)
    for t in range(n_tiles):
        offs_v = (pid_s * tiles_per_split + t) * BLOCK_V + tl.arange(0, BLOCK_V)
        v_mask = offs_v < V
        if D_CHUNKS == 1:
            c = tl.load(C + offs_v[:, None].to(tl.int64) * stride_c + offs_d[None, :],
                        mask=v_mask[:, None] & (offs_d < D)[None, :], other=0.0).to(e.dtype)  # (BLOCK_V, BLOCK_D)
            logits = tl.dot(e, tl.trans(c), input_precision=PRECISION)  # (BLOCK_N, BLOCK_V) fp32
        else:
            logits = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
            for d0 in range(0, D, BLOCK_D):
                d_mask = (d0 + offs_d) < D
                e = tl.load(E + offs_n[:, None].to(tl.int64) * stride_e + (d0 + offs_d)[None, :],
                            mask=n_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
                c = tl.load(C + offs_v[None, :].to(tl.int64) * stride_c + (d0 + offs_d)[:, None],
                            mask=v_mask[None, :] & d_mask[:, None], other=0.0).to(e.dtype)  # (BLOCK_D, BLOCK_V)
                logits = tl.dot(e, c, logits, input_precision=PRECISION)
        logits = tl.where(v_mask[None, :], logits, float("-inf"))
        # A slice's first tile always holds items, so new_max is finite from there on.
        if BASE2:
            logits = logits * LOG2E  # base-2 units from here on
            new_max = tl.maximum(run_max, tl.max(logits, axis=1))
            run_sum = run_sum * tl.exp2(run_max - new_max) + tl.sum(tl.exp2(logits - new_max[:, None]), axis=1)
        else:
            new_max = tl.maximum(run_max, tl.max(logits, axis=1))
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max
    if BASE2:
        lse = (run_max + tl.log2(run_sum)) * LN2
    else:
        lse = run_max + tl.log(run_sum)
    tl.store(PartLSE + pid_s * N + offs_n, lse, mask=n_mask)
