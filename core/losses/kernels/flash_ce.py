"""Triton kernels of ``flash_ce`` (core/losses/flash_ce.py): the catalog loss as attention.

Hidden states ``E`` (N, D) are the queries, the catalog ``C`` (V, D) the keys; the loss needs the
row log-sum-exp of ``E C^T`` (forward) and, backward, ``P = (softmax - onehot) * g`` against both
operands: ``dE = P C`` and ``dC = P^T E``. The forward's LSE is the split kernel ``cce`` shares
(core/losses/kernels/split_lse.py); the backward is two kernels here, neither takes a lock or an
atomic:

- ``_de_kernel``: program (row block, catalog slice): recomputes the logits of its slice and
  accumulates ``P C`` in fp32 registers; writes a (slices, N, D) fp32 partial, summed afterwards.
- ``_dc_kernel``: program per (catalog tile, row slice): loops over the slice's row blocks,
  recomputes the logits (transposed: items x rows) and accumulates ``P^T E`` in fp32 registers;
  one slice (large catalogs) writes its dC rows once, several write fp32 partials.

Operands: ``E`` bf16/fp16/fp32 and ``C`` any float dtype, cast to ``E``'s dtype per tile. Logits
and accumulators are fp32; the backward's second matmul takes ``P`` rounded to ``E``'s dtype, as
flash attention (and plain CE under autocast) do. Rows past N, items past V and head dims past D
are masked. Every scored row has the same weight (the upstream gradient over the number of
scored rows): ``W`` (N,) holds 2**15 for scored rows and 0 for ignored ones (their target is
replaced by 0), and the accumulators are multiplied by the device scalar ``Scale`` = weight /
2**15 before the store. So the rounded ``P`` entries are large: softmax entries of ~1/V times
1/N would be fp16 subnormals (at V = 207,649, N = 560) and lose their precision.
Launchers and tile sizes live in core/losses/flash_ce.py; this module is imported lazily there.
"""

from __future__ import annotations

import triton
import triton.language as tl

# exp(x) = exp2(x * LOG2E): the hardware has exp2, and with the row's LSE pre-scaled the
# exponent is one fused multiply-add per logit.
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _de_kernel(
    E, C, LSE, W, Scale, T, PartDE, N, V, D, stride_e, stride_c, tiles_per_split,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (row block, slice): PartDE[slice, rows] = sum over the slice's items of P C (fp32)."""
    pid_n, pid_s = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    e = tl.load(E + offs_n[:, None].to(tl.int64) * stride_e + offs_d[None, :],
                mask=n_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
    lse = tl.load(LSE + offs_n, mask=n_mask, other=0.0) * LOG2E  # (BLOCK_N,) base 2
    w = tl.load(W + offs_n, mask=n_mask, other=0.0)  # (BLOCK_N,): 0 past N and for ignored rows
    tgt = tl.load(T + offs_n, mask=n_mask, other=-1).to(tl.int32)  # (BLOCK_N,)
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for t in range(tiles_per_split):
        offs_v = (pid_s * tiles_per_split + t) * BLOCK_V + tl.arange(0, BLOCK_V)
        c = tl.load(C + offs_v[:, None].to(tl.int64) * stride_c + offs_d[None, :],
                    mask=(offs_v < V)[:, None] & d_mask[None, :], other=0.0).to(e.dtype)  # (BLOCK_V, BLOCK_D)
        logits = tl.dot(e, tl.trans(c), input_precision=PRECISION)  # (BLOCK_N, BLOCK_V)
        # Items past V have zero rows in c, so their P (finite) adds nothing to P C.
        p = tl.exp2(logits * LOG2E - lse[:, None]) - tl.where(tgt[:, None] == offs_v[None, :], 1.0, 0.0)
        p = p * w[:, None]
        acc = tl.dot(p.to(e.dtype), c, acc, input_precision=PRECISION)  # (BLOCK_N, BLOCK_D)
    acc = acc * tl.load(Scale)
    tl.store(PartDE + (pid_s * N + offs_n[:, None].to(tl.int64)) * BLOCK_D + offs_d[None, :], acc,
             mask=n_mask[:, None])


@triton.jit
def _dc_kernel(
    E, C, LSE, W, Scale, T, DC, N, V, D, stride_e, stride_c, stride_dc_split, stride_dc, rows_per_split,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (catalog tile, row slice): DC[slice, items] = sum over the slice's rows of P^T E.

    With one row slice ``DC`` is dC itself (written once, in its dtype); with several (few
    items, many rows: more programs than catalog tiles) it is an fp32 partial summed afterwards.
    """
    pid_v, pid_s = tl.program_id(0), tl.program_id(1)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    v_mask = offs_v < V
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    c = tl.load(C + offs_v[:, None].to(tl.int64) * stride_c + offs_d[None, :],
                mask=v_mask[:, None] & d_mask[None, :], other=0.0)
    c = c.to(E.dtype.element_ty)  # (BLOCK_V, BLOCK_D)
    acc = tl.zeros((BLOCK_V, BLOCK_D), tl.float32)
    row_end = tl.minimum(N, (pid_s + 1) * rows_per_split)
    for n0 in range(pid_s * rows_per_split, row_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < row_end
        e = tl.load(E + offs_n[:, None].to(tl.int64) * stride_e + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        lse = tl.load(LSE + offs_n, mask=n_mask, other=0.0) * LOG2E  # base 2
        w = tl.load(W + offs_n, mask=n_mask, other=0.0)  # rows past the slice get weight 0
        tgt = tl.load(T + offs_n, mask=n_mask, other=-1).to(tl.int32)
        logits = tl.dot(c, tl.trans(e), input_precision=PRECISION)  # (BLOCK_V, BLOCK_N)
        p = tl.exp2(logits * LOG2E - lse[None, :]) - tl.where(offs_v[:, None] == tgt[None, :], 1.0, 0.0)
        p = p * w[None, :]
        acc = tl.dot(p.to(e.dtype), e, acc, input_precision=PRECISION)  # (BLOCK_V, BLOCK_D)
    acc = acc * tl.load(Scale)
    tl.store(DC + pid_s * stride_dc_split + offs_v[:, None].to(tl.int64) * stride_dc + offs_d[None, :],
             acc, mask=v_mask[:, None] & d_mask[None, :])
