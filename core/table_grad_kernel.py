"""The Triton kernels of ``core.table_grad.add_rows_``: an embedding's row gradients added into
its table's gradient in place, one writer per item, no atomics. Two ways to find each id's
positions: a stable sort (``add_rows_kernel``, any number of ids) or, for few ids, comparing
each position's id with all the others' (``add_rows_scan_kernel``, no sort).

``add_rows_kernel``'s input: the lookup's ids sorted stably (``SortedIds`` (T,)), where each sorted position came from
(``Order`` (T,): the sort's indices, so a run of one id lists its positions in their original
order) and the row gradients in their original order (``Rows`` (T, D), row stride ``stride_r``).
Program (sorted position p, block of ``BLOCK_D`` columns): p starts a segment when its id
differs from the previous position's (or p = 0) and is not 0 (the padding id: its rows are not
added). A starting program sums its segment's rows, ``CHUNK`` sorted positions at a time (each
chunk's rows summed by ``tl.sum``, the chunks in sorted order), until a chunk is not full of its
id, and adds the sum to ``Table[id]``. Every other program does nothing. Each id has exactly one
writer and a fixed summation order (the same for every run: no atomics), so reruns are
bit-identical. The rows are read in fp32 whatever their float dtype; the table is fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def add_rows_kernel(
    Table, SortedIds, Order, Rows, T, D, stride_t, stride_r,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program (p, column block): Table[id, cols] += the sum of id's rows, if p starts id's segment."""
    p = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    item = tl.load(SortedIds + p)
    prev = tl.load(SortedIds + tl.maximum(p - 1, 0))
    starts = (item != 0) & ((p == 0) | (prev != item))
    if starts:
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        pos = p + tl.arange(0, CHUNK)
        more = p < T  # True (a tensor: the loop's condition must keep one type)
        while more:
            in_range = pos < T
            same = tl.load(SortedIds + pos, mask=in_range, other=0) == item
            in_seg = in_range & same  # sorted: the segment is contiguous, so its positions lead the chunk
            src = tl.load(Order + pos, mask=in_seg, other=0)
            rows = tl.load(Rows + src[:, None] * stride_r + offs_d[None, :],
                           mask=in_seg[:, None] & d_mask[None, :], other=0.0)
            acc += tl.sum(rows.to(tl.float32), axis=0)
            more = tl.sum(in_seg.to(tl.int32), axis=0) == CHUNK  # a full chunk: the segment may go on
            pos += CHUNK
        out = Table + item.to(tl.int64) * stride_t + offs_d  # int32 ids: no overflow
        tl.store(out, tl.load(out, mask=d_mask, other=0.0) + acc, mask=d_mask)


@triton.jit
def add_rows_scan_kernel(
    Table, Ids, Rows, T, D, stride_t, stride_r,
    SCAN: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Without a sort, for few ids: program (position i, column block) adds the rows of i's id
    if i is its id's first position (no earlier position holds it, found by comparing against
    them ``SCAN`` at a time), summed ``CHUNK`` positions at a time from i on (each chunk's rows
    of that id summed by ``tl.sum``, the chunks in order). One writer per id, a fixed order."""
    i = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    item = tl.load(Ids + i)
    earlier = tl.zeros((SCAN,), tl.int32)  # positions before i holding i's id
    for j0 in range(0, tl.where(item != 0, i, 0), SCAN):  # the padding id adds nothing: no scan
        j = j0 + tl.arange(0, SCAN)
        earlier += (tl.load(Ids + j, mask=j < i, other=0) == item).to(tl.int32)
    if (item != 0) & (tl.sum(earlier, axis=0) == 0):
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for j0 in range(i, T, CHUNK):
            j = j0 + tl.arange(0, CHUNK)
            same = tl.load(Ids + j, mask=j < T, other=0) == item
            rows = tl.load(Rows + j[:, None].to(tl.int64) * stride_r + offs_d[None, :],
                           mask=same[:, None] & d_mask[None, :], other=0.0)
            acc += tl.sum(rows.to(tl.float32), axis=0)
        out = Table + item.to(tl.int64) * stride_t + offs_d
        tl.store(out, acc + tl.load(out, mask=d_mask, other=0.0), mask=d_mask)
