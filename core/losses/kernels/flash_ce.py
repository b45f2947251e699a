"""Triton kernels of ``flash_ce`` (core/losses/flash_ce.py): the catalog loss as attention.

Hidden states ``E`` (N, D) are the queries, the catalog ``C`` (V, D) the keys; the loss needs the
row log-sum-exp of ``E C^T`` (forward) and, backward, ``P = (softmax - onehot) * g`` against both
operands: ``dE = P C`` and ``dC = P^T E``. Since ``P C = softmax C - C[target]`` (times g), dE
is attention's output with the catalog as keys and values, minus the target row: the forward
computes ``softmax C`` in the same pass as the LSE (one more matmul per tile, no more
exponentials), and dE in the backward is a merge, with no second pass over the catalog. No
kernel takes a lock or an atomic:

- ``_forward_kernel``: program (row block, catalog slice): the slice's partial LSE and its
  ``softmax C`` (online, rescaled as the running max grows: flash attention's forward), fp32.
- ``_finish_kernel``: program per row block: merges the slices' partial LSEs, gathers the target
  rows of ``C`` for the target logit, and writes each row's LSE plus its block's loss sum and
  count of scored rows; ``_loss_kernel`` (one program) sums the blocks in a fixed order and
  writes the mean loss and the count (NaN loss with no scored row, as ``F.cross_entropy``).
- ``_de_kernel``: program per row block: merges the slices' ``softmax C`` with weights
  exp(slice LSE - LSE), subtracts ``C[target]`` and scales: dE.
- ``_dc_kernel``: program per (catalog tile, row slice): loops over the slice's row blocks,
  recomputes the logits (transposed: items x rows) and accumulates ``P^T E`` in fp32 registers;
  one slice (large catalogs) writes its dC rows once, several write fp32 partials.
- ``_sum_cast_kernel``: sums fp32 partials over slices in a fixed order and casts.

Operands: ``E`` bf16/fp16/fp32 and ``C`` any float dtype, cast to ``E``'s dtype per tile. Logits
and accumulators are fp32; the second matmul of the forward and of dC take the probabilities
rounded to ``E``'s dtype, as flash attention (and plain CE under autocast) do. So dE's error is
that rounding's (2**-8 relative per entry in bf16) of ``softmax C``, then ``C[target]`` is
subtracted exactly; where the target's probability is near 1, dE is a small difference of two
such vectors (the old backward kernel rounded ``p_t - 1`` instead: more accurate there, the
same elsewhere; tests/test_flash_ce.py bounds both against float64). Rows past N, items past V
and head dims past D are masked. Every scored row has the same weight (the upstream gradient
over the number of scored rows), read from device memory in the kernels, so nothing is computed
by torch between launches. The probabilities are rounded scaled by ``W_SCORED`` = 2**15, folded
into their exponent (``W_LOG2``; in dC the target's 1 becomes 2**15 too, and ignored rows and
rows past N get an exponent of -inf, so 0, with no multiply or select per entry), and the
accumulators are rescaled before the store (dC by ``grad / (max(count, 1) * 2**15)``). So the
rounded entries are large: softmax entries of ~1/V times 1/N would be fp16 subnormals (at
V = 207,649, N = 560) and lose their precision. ``Stats`` is the forward's (N + 2,) fp32
buffer: each row's LSE, the count, then (``SKIP_IGNORED``) the end of the last scored row;
``Part`` its (S, N) partial LSEs followed by the (S, N, D) partial outputs.

``SKIP_IGNORED`` (a compile-time switch, ``core.losses.flash_ce.SKIP_IGNORED_BLOCKS``): row
blocks with no scored row do no catalog work. The forward leaves their LSE at -inf and their
softmax C undefined (NaN), which dE never reads (it loads scored rows only: 0 elsewhere); dC
stops its row loop after the last scored row (``Stats[N + 1]``, written by the finish and loss
kernels), and its exponent of -inf on ignored rows keeps their LSE out (-inf there would give
exp2(+inf)). A graphed step's filler rows (a bucket of 1,024 slots for ~560 real positions) are
such blocks. Scored rows' arithmetic is unchanged: the outputs equal the switch-off outputs bit
for bit (tests/test_flash_ce_skip.py).
Launchers and tile sizes live in core/losses/flash_ce.py; this module is imported lazily there.
"""

from __future__ import annotations

import triton
import triton.language as tl

from core.losses.registry import IGNORE_INDEX as _IGNORE_INDEX

# exp(x) = exp2(x * LOG2E): the hardware has exp2, and with the row's LSE pre-scaled the
# exponent is one fused multiply-add per logit.
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
IGNORE = tl.constexpr(_IGNORE_INDEX)
W_SCORED = tl.constexpr(32768.0)  # 2**15: see the module doc
W_LOG2 = tl.constexpr(15.0)  # log2(W_SCORED): the weight folded into an exponent


@triton.jit
def _finish_kernel(
    PartLSE, E, C, T, Stats, BlockSums, N, V, D, stride_e, stride_c, n_splits, n_prog,
    BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, SKIP_IGNORED: tl.constexpr,
):
    """Program per row block: Stats[rows] = LSE merged over slices; BlockSums[pid] = sum over
    its scored rows of LSE - target logit, BlockSums[n_prog + pid] = their count (and with
    ``SKIP_IGNORED`` BlockSums[2 n_prog + pid] = 1 + its last scored row, 0 without one)."""
    pid = tl.program_id(0)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < N
    offs_s = tl.arange(0, BLOCK_S)
    run_max = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_R,), tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):  # log-sum-exp of the slices' partial LSEs
        s = s0 + offs_s
        part = tl.load(PartLSE + s[:, None] * N + offs_r[None, :],
                       mask=(s < n_splits)[:, None] & r_mask[None, :], other=float("-inf"))
        new_max = tl.maximum(run_max, tl.max(part, axis=0))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows past N only
        run_sum = run_sum * tl.exp(run_max - safe_max) + tl.sum(tl.exp(part - safe_max[None, :]), axis=0)
        run_max = new_max
    lse = run_max + tl.log(run_sum)
    tl.store(Stats + offs_r, lse, mask=r_mask)
    # The target logit as the backward kernels see it: operands rounded to E's dtype, fp32 sum.
    tgt = tl.load(T + offs_r, mask=r_mask, other=IGNORE)
    valid = r_mask & (tgt != IGNORE)
    in_catalog = valid & (tgt >= 0) & (tgt < V)  # never read outside C (a bad target reads as 0)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    e = tl.load(E + offs_r[:, None].to(tl.int64) * stride_e + offs_d[None, :],
                mask=valid[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_R, BLOCK_D)
    c = tl.load(C + tgt[:, None].to(tl.int64) * stride_c + offs_d[None, :],
                mask=in_catalog[:, None] & d_mask[None, :], other=0.0).to(e.dtype)
    dot = tl.sum(e.to(tl.float32) * c.to(tl.float32), axis=1)  # (BLOCK_R,)
    row_loss = tl.where(valid, lse - dot, 0.0)
    tl.store(BlockSums + pid, tl.sum(row_loss, axis=0))
    tl.store(BlockSums + n_prog + pid, tl.sum(valid.to(tl.float32), axis=0))
    if SKIP_IGNORED:
        tl.store(BlockSums + 2 * n_prog + pid, tl.max(tl.where(valid, offs_r + 1, 0), axis=0).to(tl.float32))


@triton.jit
def _loss_kernel(BlockSums, Stats, Loss, N, n_blocks, BLOCK: tl.constexpr, SKIP_IGNORED: tl.constexpr):
    """One program: Loss = sum of the blocks' loss sums / their count (0 / 0 = NaN); Stats[N] = count
    (with ``SKIP_IGNORED`` Stats[N + 1] = the end of the last scored row, exact below 2**24 rows)."""
    total = tl.zeros((BLOCK,), tl.float32)
    count = tl.zeros((BLOCK,), tl.float32)
    for b0 in range(0, n_blocks, BLOCK):
        b = b0 + tl.arange(0, BLOCK)
        total += tl.load(BlockSums + b, mask=b < n_blocks, other=0.0)
        count += tl.load(BlockSums + n_blocks + b, mask=b < n_blocks, other=0.0)
    total_sum = tl.sum(total, axis=0)
    count_sum = tl.sum(count, axis=0)
    tl.store(Loss, total_sum / count_sum)
    tl.store(Stats + N, count_sum)
    if SKIP_IGNORED:
        live = tl.zeros((BLOCK,), tl.float32)
        for b0 in range(0, n_blocks, BLOCK):
            b = b0 + tl.arange(0, BLOCK)
            live = tl.maximum(live, tl.load(BlockSums + 2 * n_blocks + b, mask=b < n_blocks, other=0.0))
        tl.store(Stats + N + 1, tl.max(live, axis=0))


@triton.jit
def _forward_kernel(
    E, C, T, Part, N, V, D, stride_e, stride_c, tiles_per_split,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    SKIP_IGNORED: tl.constexpr,
):
    """Program (row block, slice): flash attention's forward with the catalog as keys AND values.
    Part[slice, rows] = log sum over the slice's items of exp(logit) (computed as the split LSE
    kernel computes it), and Part[S N + (slice N + row) D + d] = the slice's softmax times C,
    sum_v softmax_v C[v, d] over its items (fp32; S slices), what dE needs besides C[target]."""
    pid_n, pid_s = tl.program_id(0), tl.program_id(1)
    n_splits = tl.num_programs(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    if SKIP_IGNORED:  # no row of the block has a target: no tile (LSE -inf, softmax C NaN)
        tgt = tl.load(T + offs_n, mask=n_mask, other=IGNORE)
        n_tiles = tl.where(tl.max((tgt != IGNORE).to(tl.int32), axis=0) > 0, tiles_per_split, 0)
    else:
        n_tiles = tiles_per_split
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    e = tl.load(E + offs_n[:, None].to(tl.int64) * stride_e + offs_d[None, :],
                mask=n_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
    run_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_N,), tl.float32)
    # run_max in base-2 units; run_sum and acc scaled by W_SCORED (2**15, folded into the exponent:
    # p is rounded to E's dtype as a large number, where fp16 would make small ones subnormal).
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)  # sum of exp2(logit - run_max) * W_SCORED * C
    for t in range(n_tiles):
        offs_v = (pid_s * tiles_per_split + t) * BLOCK_V + tl.arange(0, BLOCK_V)
        v_mask = offs_v < V
        c = tl.load(C + offs_v[:, None].to(tl.int64) * stride_c + offs_d[None, :],
                    mask=v_mask[:, None] & d_mask[None, :], other=0.0).to(e.dtype)  # (BLOCK_V, BLOCK_D)
        logits = tl.dot(e, tl.trans(c), input_precision=PRECISION)  # (BLOCK_N, BLOCK_V) fp32
        if (pid_s * tiles_per_split + t + 1) * BLOCK_V > V:  # a tile past the catalog's end: mask
            logits = tl.where(v_mask[None, :], logits, float("-inf"))
        # A slice's first tile always holds items, so new_max is finite from there on.
        new_max = tl.maximum(run_max, tl.max(logits, axis=1) * LOG2E)
        alpha = tl.exp2(run_max - new_max)
        p = tl.exp2(logits * LOG2E - (new_max - W_LOG2)[:, None])  # (BLOCK_N, BLOCK_V) in [0, 2**15]
        run_sum = run_sum * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(e.dtype), c, acc * alpha[:, None], input_precision=PRECISION)
        run_max = new_max
    lse = (run_max + tl.log2(run_sum) - W_LOG2) * LN2
    tl.store(Part + pid_s * N + offs_n, lse, mask=n_mask)
    out = acc / run_sum[:, None]  # NaN in skipped blocks: dE reads scored rows only
    tl.store(Part + n_splits * N + (pid_s * N + offs_n[:, None]).to(tl.int64) * D + offs_d[None, :], out,
             mask=n_mask[:, None] & d_mask[None, :])


@triton.jit
def _de_kernel(
    C, Stats, Part, Grad, T, DE, N, V, D, stride_c, n_splits,
    BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program per row block: DE[rows] = (softmax C - C[target]) * grad / count for scored rows,
    0 for ignored ones; softmax C merged from the forward's slices, each weighted by
    exp(its LSE - the row's LSE), in a fixed order."""
    pid = tl.program_id(0)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < N
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    offs_s = tl.arange(0, BLOCK_S)
    tgt = tl.load(T + offs_r, mask=r_mask, other=IGNORE)
    scored = r_mask & (tgt != IGNORE)
    lse = tl.load(Stats + offs_r, mask=scored, other=0.0)  # finite for scored rows
    acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        s = s0 + offs_s
        sr_mask = (s < n_splits)[:, None] & scored[None, :]  # (BLOCK_S, BLOCK_R)
        part = tl.load(Part + s[:, None] * N + offs_r[None, :], mask=sr_mask, other=float("-inf"))
        w = tl.exp(part - lse[None, :])  # (BLOCK_S, BLOCK_R), 0 where masked
        o = tl.load(Part + n_splits * N + (s[:, None, None] * N + offs_r[None, :, None]).to(tl.int64) * D
                    + offs_d[None, None, :], mask=sr_mask[:, :, None] & d_mask[None, None, :], other=0.0)
        acc += tl.sum(w[:, :, None] * o, axis=0)
    in_catalog = scored & (tgt >= 0) & (tgt < V)  # never read outside C (a bad target reads as 0)
    c = tl.load(C + tgt[:, None].to(tl.int64) * stride_c + offs_d[None, :],
                mask=in_catalog[:, None] & d_mask[None, :], other=0.0)
    c = c.to(DE.dtype.element_ty).to(tl.float32)  # the target row as the forward's matmul saw it
    scale = tl.load(Grad).to(tl.float32) / tl.maximum(tl.load(Stats + N), 1.0)
    de = (acc - c) * scale  # exactly 0 on rows not scored: nothing was loaded for them
    tl.store(DE + offs_r[:, None].to(tl.int64) * D + offs_d[None, :], de.to(DE.dtype.element_ty),
             mask=r_mask[:, None] & d_mask[None, :])


@triton.jit
def _dc_kernel(
    E, C, Stats, Grad, T, DC, N, V, D, stride_e, stride_c, stride_dc_split, stride_dc, rows_per_split,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    SKIP_IGNORED: tl.constexpr,
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
    if SKIP_IGNORED:  # rows after the last scored one contribute nothing
        row_end = tl.minimum(row_end, tl.load(Stats + N + 1).to(tl.int32))
    for n0 in range(pid_s * rows_per_split, row_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < row_end
        e = tl.load(E + offs_n[:, None].to(tl.int64) * stride_e + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        lse = tl.load(Stats + offs_n, mask=n_mask, other=0.0)
        tgt = tl.load(T + offs_n, mask=n_mask, other=IGNORE).to(tl.int32)
        # exp2(logit * LOG2E - shift) = softmax * W_SCORED on scored rows, 0 on the others (rows
        # past the slice, ignored rows: their LSE may be -inf where the forward skipped their block)
        shift = tl.where(tgt != IGNORE, lse * LOG2E - W_LOG2, float("inf"))
        logits = tl.dot(c, tl.trans(e), input_precision=PRECISION)  # (BLOCK_V, BLOCK_N)
        p = tl.exp2(logits * LOG2E - shift[None, :]) - tl.where(offs_v[:, None] == tgt[None, :], W_SCORED, 0.0)
        acc = tl.dot(p.to(e.dtype), e, acc, input_precision=PRECISION)  # (BLOCK_V, BLOCK_D)
    scale = tl.load(Grad).to(tl.float32) / (tl.maximum(tl.load(Stats + N), 1.0) * W_SCORED)
    acc = acc * scale
    tl.store(DC + pid_s * stride_dc_split + offs_v[:, None].to(tl.int64) * stride_dc + offs_d[None, :],
             acc.to(DC.dtype.element_ty), mask=v_mask[:, None] & d_mask[None, :])


@triton.jit
def _sum_cast_kernel(
    Part, Out, R, D, n_splits, stride_split, stride_out,
    BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program per row block: Out[rows] = sum over slices of Part[slice, rows] (fp32, slices in a
    fixed order: reruns are bit-identical), cast to Out's dtype. Part rows hold D entries."""
    pid = tl.program_id(0)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, BLOCK_S)
    rd_mask = (offs_r < R)[:, None] & (offs_d < D)[None, :]
    rd = offs_r[:, None].to(tl.int64) * D + offs_d[None, :]  # (BLOCK_R, BLOCK_D)
    acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        s = s0 + offs_s
        tile = tl.load(Part + s[:, None, None].to(tl.int64) * stride_split + rd[None, :, :],
                       mask=(s < n_splits)[:, None, None] & rd_mask[None, :, :], other=0.0)
        acc += tl.sum(tile, axis=0)
    tl.store(Out + offs_r[:, None].to(tl.int64) * stride_out + offs_d[None, :],
             acc.to(Out.dtype.element_ty), mask=rd_mask)
