"""The split log-sum-exp forward's launcher and grid, shared by ``flash_ce`` and ``cce``.

``split_lse(e, c, ...)`` is the (N,) fp32 row log-sum-exp of ``e @ c.T`` without materializing
(N, V): a grid of (row block, catalog slice) programs (core/losses/kernels/split_lse.py), each
writing one partial LSE per row, merged by ``torch.logsumexp``. ``splits`` cuts work into slices
so that the grid fills the GPU; flash_ce's backward kernels use it too.

Imports nothing from triton: the kernel module is imported on the first launch, so ``core``
imports on machines without triton.
"""

from __future__ import annotations

import functools

import torch

SPLITS_PER_SM = 4  # programs per SM to aim for in the split kernels: hides memory latency


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """The device's streaming multiprocessors (a stand-in under the Triton interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the Triton interpreter (tests): a few slices are enough to exercise the merge


def splits(n_tiles: int, n_blocks: int, device: torch.device, cap: int | None = None) -> tuple[int, int]:
    """(slices, tiles per slice): cut ``n_tiles`` tiles into slices so that ``n_blocks`` times
    the slices fill the GPU (at most ``cap`` slices)."""
    n_splits = max(1, min(n_tiles, -(-SPLITS_PER_SM * sm_count(device) // n_blocks), cap or n_tiles))
    per_split = -(-n_tiles // n_splits)
    return -(-n_tiles // per_split), per_split  # no slice starts past the catalog's end


def launch(n: int, v: int, d: int, *, dtype: torch.dtype, device: torch.device, block_n: int, block_v: int,
           block_d: int, base2: bool, num_warps: int, num_stages: int) -> tuple[tuple[int, int], int, dict]:
    """(grid, tiles per slice, meta-parameters) of ``split_lse_kernel`` for ``e`` (N, D) of
    ``dtype`` against ``c`` (V, D): what ``split_lse`` and flash_ce's launch plan run with."""
    n_blocks = -(-n // block_n)
    n_splits, per_split = splits(-(-v // block_v), max(1, n_blocks), device)
    meta = dict(BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_D=block_d, D_CHUNKS=-(-d // block_d), BASE2=base2,
                PRECISION="ieee" if dtype == torch.float32 else "tf32",  # tf32 is unused for 16-bit operands
                num_warps=num_warps, num_stages=num_stages)
    return (n_blocks, n_splits), per_split, meta


def split_lse(e: torch.Tensor, c: torch.Tensor, *, block_n: int, block_v: int, block_d: int,
              base2: bool, num_warps: int, num_stages: int) -> torch.Tensor:
    """(N,) fp32 row log-sum-exp of ``e @ c.T`` (``e`` (N, D), ``c`` (V, D), both contiguous).

    Tiles: ``block_n`` rows by ``block_v`` items, ``block_d`` (a power of two, >= 16) of the head
    dim at a time (the whole row when ``block_d >= D``). ``base2``: the kernel's exponentials in
    base 2 (flash_ce) or natural (cce); both are kept so that each caller's outputs stay as they were.
    """
    from core.losses.kernels import split_lse as kernels

    (n, d), v = e.shape, c.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.float32, device=e.device)
    grid, per_split, meta = launch(n, v, d, dtype=e.dtype, device=e.device, block_n=block_n, block_v=block_v,
                                   block_d=block_d, base2=base2, num_warps=num_warps, num_stages=num_stages)
    part = torch.empty((grid[1], n), dtype=torch.float32, device=e.device)
    kernels.split_lse_kernel[grid](e, c, e, part, n, v, d, e.stride(0), c.stride(0), per_split,
                                   SKIP_IGNORED=False, **meta)  # every row's LSE: no targets (T unread)
    return torch.logsumexp(part, dim=0) if grid[1] > 1 else part[0]
