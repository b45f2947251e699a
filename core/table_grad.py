"""An embedding lookup's row gradients added into its table's gradient in place:
``add_rows_(table, ids, rows)`` is ``table.index_add_(0, ids, rows)`` with the padding id 0
left out (``core.model.TiedItemTable``'s backward, issue 21.3: "one pass over the item table").

Why a kernel: CUDA's deterministic way, ``table += embedding_dense_backward(rows, ids, ...)``,
writes a zeroed (V + 1, D) table, sorts the ids and reads the whole table back to add it (the
fill and the add are full-table passes: 53 MB each at 207,649 x 64 fp32); ``index_put_`` with
``accumulate`` works in place but took 0.21 ms a beauty-like and 0.62 ms an ml20m-like step on
an H200 where many positions share an item (call D of 2026-12-02); ``index_add_`` on CUDA adds
with atomics (not reproducible). Here: one stable sort of the T ids (``torch.sort``, no host
sync), then one program per sorted position; the first position of each id's run sums the
run's rows in a fixed order and adds the sum to the table's row (``core/table_grad_kernel.py``):
each touched row read and written once, untouched rows not at all, no atomics, no host sync
(so it is captured in a CUDA graph), reruns bit-identical. With at most ``SCAN_MAX_IDS`` ids
there is no sort: each position's program compares its id with the earlier positions' and, if
it is the first, sums its id's rows from there on (``add_scanned_rows_``): the same one writer
per id and fixed order (positions ascending), summed in other chunks than the sorted kernel's,
so the two agree to fp32 rounding, not bit for bit.

Where it runs: CUDA tensors, or CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``,
how tests/test_table_grad.py checks it); ``runs_kernel`` says which. Imports nothing from
triton: the kernel module is imported on the first launch, so ``core`` imports without triton.
"""

from __future__ import annotations

import os

import torch

MAX_BLOCK_D = 128  # columns per program: wider tables take a second grid axis
# Up to this many ids, ``add_rows_`` compares ids instead of sorting them (no sort: one launch
# instead of a cast, a sort and the kernel); O(T**2) compares, so larger T sorts. A graphed
# beauty-like step adds 640-1,024 ids (the packed bucket), an ml20m-like one 12,800. On one H200
# at 768 ids (call GG, experiments/bench/NOTES_speed.md, "Twelfth session"): the scan 0.010 ms,
# against 0.029 ms for the int32 cast, the sort (0.019) and the sorted kernel. The cut (2,048)
# is not measured.
SCAN_MAX_IDS = 2048
SCAN_IDS = 1024  # ids compared per step of a scan program's loop


def runs_kernel(table: torch.Tensor) -> bool:
    """Whether ``add_rows_`` runs its kernel for ``table`` (else callers use ``index_add_``): an
    fp32 table on CUDA, or on the CPU under the Triton interpreter."""
    return table.dtype == torch.float32 and (table.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def launch_meta(d: int) -> dict:
    """(BLOCK_D, CHUNK, num_warps) for D columns: a chunk of ~2,048 values per program (not tuned)."""
    block_d = min(MAX_BLOCK_D, 1 << max(d - 1, 0).bit_length())
    return {"BLOCK_D": block_d, "CHUNK": max(8, min(64, 2048 // block_d)), "num_warps": 2}


def add_rows_(table: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``table[ids[i]] += rows[i]`` for every i with ``ids[i] != 0``, in place; returns ``table``.

    ``table`` (R, D) fp32 with unit column stride; ``ids`` (T,) int64 in [0, R); ``rows`` (T, D)
    float (read as fp32). Deterministic: a row's contributions are summed in a fixed order (their
    positions' order, ``tl.sum`` within each chunk of positions) and added once. No host sync."""
    if ids.ndim != 1 or rows.ndim != 2 or rows.shape != (ids.shape[0], table.shape[1]):
        raise ValueError(f"add_rows_: ids (T,), rows (T, {table.shape[1]}), got {tuple(ids.shape)}, "
                         f"{tuple(rows.shape)}")
    if ids.shape[0] <= SCAN_MAX_IDS:
        return add_scanned_rows_(table, ids, rows)
    # int32 keys where the ids fit (any table under 2**31 rows): the same stable order, and half
    # the radix passes of int64 keys (a 1,024-id int64 sort took 0.028 ms of a 0.80-ms
    # beauty-like step on an H200, call BB)
    keys = ids.to(torch.int32) if table.shape[0] <= torch.iinfo(torch.int32).max else ids
    order = torch.sort(keys, stable=True)
    return add_sorted_rows_(table, order.values, order.indices, rows)


def add_scanned_rows_(table: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``add_rows_`` without the sort: each position's program compares its id with the T
    positions' (``add_rows_scan_kernel``; O(T**2) compares, for few ids). ``ids`` with unit stride."""
    from core import table_grad_kernel as kernels

    _check_table(table)
    n, d = ids.shape[0], table.shape[1]
    if n == 0 or d == 0:
        return table
    ids = ids.contiguous()
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    block_d = launch_meta(d)["BLOCK_D"]
    grid = (n, -(-d // block_d))
    kernels.add_rows_scan_kernel[grid](table, ids, rows, n, d, table.stride(0), rows.stride(0), SCAN=SCAN_IDS,
                                       CHUNK=max(8, min(128, 8192 // block_d)), BLOCK_D=block_d, num_warps=4)
    return table


def _check_table(table: torch.Tensor) -> None:
    if table.dtype != torch.float32 or table.stride(1) != 1:
        raise ValueError(f"add_rows_: the table must be fp32 with unit column stride, got {table.dtype}, "
                         f"stride {table.stride()}")


def add_sorted_rows_(table: torch.Tensor, sorted_ids: torch.Tensor, order: torch.Tensor,
                     rows: torch.Tensor) -> torch.Tensor:
    """``add_rows_`` given the stable sort of its ids: ``sorted_ids`` (T,) int32 or int64 and
    where each came from, ``order`` (T,) (both with unit stride; only their first T entries are
    read)."""
    from core import table_grad_kernel as kernels

    _check_table(table)
    n, d = sorted_ids.shape[0], table.shape[1]
    if n == 0 or d == 0:
        return table
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    meta = launch_meta(d)
    grid = (n, -(-d // meta["BLOCK_D"]))
    kernels.add_rows_kernel[grid](table, sorted_ids, order, rows, n, d, table.stride(0), rows.stride(0), **meta)
    return table
