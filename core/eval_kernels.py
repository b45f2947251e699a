"""Fused chunk top-k for full-catalog evaluation: the scores ``users @ catalog[lo:hi].T`` never reach memory.

What it computes. ``fused_chunk_top(users, catalog, lo, hi, k, hist, sentinel)`` is
``core.metrics.chunk_top(scores, k, lo=lo, sentinel=sentinel, group=group)`` of the fp32 chunk
``scores = users @ catalog[lo:hi].T`` with each user's history columns at -inf (what
``core.evaluation.scan_catalog`` builds with a matmul and ``_mask_chunk``), without the (B, hi - lo)
buffer. Why: at B = 4096 users x 32,768 items that buffer is 512 MiB written by the matmul and read
again by the group max, most of a chunk's time (core/evaluation.py's docstring); here the only
outputs are O(B x (chunk / group + k x group)). Three pieces:
- ``group_max`` (kernel ``_group_max_kernel``): (B, G) max of each CONTIGUOUS group of ``group``
  columns [lo + g * group, lo + (g + 1) * group) (the last one cut at ``hi``), the scores computed
  tile by tile in registers. No history masking.
- ``score_columns`` (kernel ``_score_columns_kernel``): the scores of a few given (user, column)
  pairs, with padding columns (outside [0, V)) and the user's history columns at -inf.
- ``fused_chunk_top``: group maxima; the groups that hold a history pair of their user
  ("poisoned": their max may be a masked item) recomputed by ``score_columns`` and put back; the
  top-(k + 1) groups; the k best groups' columns rescored by ``score_columns``; top-(k + 1) of
  those; the tie flag and sentinel exactly as ``chunk_top``. Which columns make a group does not
  change ``chunk_top``'s values nor its tie flag (its docstring: the argument holds for any
  partition), so contiguous groups (here) and strided ones (``chunk_top``) agree; which of several
  tied items fills the k-th place is topk's choice either way. ``target_scores``: a target's score
  by the same arithmetic, so that rank = 1 + #(top-k > target) compares like with like.
``prefilter_chunk_top``: the same result where it can certify it, the group maxima taken by
``group_max`` on TF32 tensor cores instead (a rigorous error margin, its docstring), only the
candidate groups rescored exactly; a fixed number of the rows it cannot certify redone exactly
(``rescue``), the rest flagged (``overflow``) for an exact rescan.
No host sync anywhere (no ``.item()``, ``nonzero``, boolean-mask indexing or data-dependent
shape): poisoned pairs are recomputed for every history pair of the batch (those outside the chunk
are clamped to an edge group and recompute its unchanged max).

The bit-identity contract. The result is exact only if, for the same (user, column), the score
inside ``group_max``'s tile and the score ``score_columns`` returns are the SAME fp32 number: a group
is chosen on the first and its items ranked on the second. ``score_columns`` computes each score as
one sequential fp32 FMA chain, ``acc = fma(u[k], c[k], acc)`` for k = 0 .. BLOCK_D - 1 from
acc = 0 (k >= D loads zeros on both sides, as the tiles' padding does). ``group_max`` computes its
tile either with ``tl.dot(u, c.T, input_precision="ieee")`` (fp32, no TF32; on NVIDIA GPUs
Triton lowers an fp32 ieee dot to a blocked FMA dot, the same chain over K per output element,
``K_CHUNK``-wide dots accumulating into one another keep it one chain) or, ``EXPLICIT_FMA``, with
that chain written out (``DEFAULT_EXPLICIT_FMA`` picks). tests/test_eval_kernels.py checks it:
on the CPU (Triton interpreter, whose ``tl.dot`` is a numpy matmul and so NOT the same chain)
with integer-valued data, where every summation order gives the same exact sum, against a float64
oracle and ``chunk_top``; on a GPU (``-m gpu``) by ``group_max`` against the group maxima of
``score_columns`` over every column, bit for bit, for both settings (that test decides the default).

NaN rule: a NaN score anywhere in a user's chunk (outside the history) makes that user's
``values`` hold a NaN, as with ``chunk_top`` (torch.topk ranks NaN first): ``group_max`` propagates
NaN explicitly (``tl.max`` may drop it) and torch's ``amax`` / ``topk`` do the rest. A NaN on a
history column is masked, as ``_mask_chunk`` masks it.

CUDA only in production; the tests run the kernels on the CPU under the Triton interpreter
(``TRITON_INTERPRET=1`` set before this module is imported). Operands: fp32, contiguous.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from core.metrics import NEG_INF, ChunkTop, chunk_top

# group_max's tile arithmetic: False = tl.dot (ieee fp32), True = the FMA chain written out.
# Decided by tests/test_eval_kernels.py's GPU test (both must match score_columns bit for bit).
DEFAULT_EXPLICIT_FMA = False
# group_max's launch: (users per program, groups per tile, tiles per program, warps). Measured on
# one H200 (2026-12-02, call J, ``kernels_bench/tune_eval_kernel.py``, 4,096 users x 207,649 x 64,
# do_bench): (128, 2, 2, 8) 4.86 ms, the fastest of 10; the first version (64, 1, 1, 4) 8.12 ms;
# the fp32 GEMM + group max it replaces 4.23 ms. ``EVAL_GROUP_MAX_TILES="b,g,t,w"`` in the
# environment (read at import) overrides it.
TILES = tuple(int(x) for x in os.environ.get("EVAL_GROUP_MAX_TILES", "128,2,2,8").split(","))
# The same kernel at precision "tf32" (the prefilter's approximate maxima): measured on one H200
# (2026-12-03, call U, ``tune_eval_kernel.py --precision tf32``, 4,096 users x 207,649 x 64):
# (128, 1, 4, 8) 0.692 ms, the fastest of 10 (the ieee tiles 0.843; the exact kernel 4.854).
# ``EVAL_TF32_TILES="b,g,t,w"`` (read at import) overrides it.
TF32_TILES = tuple(int(x) for x in os.environ.get("EVAL_TF32_TILES", "128,1,4,8").split(","))
K_CHUNK = 64  # head-dim width of one tl.dot in group_max (wider D: chained dots, one FMA chain)
BLOCK_P, BLOCK_M = 16, 32  # (pairs' rows, columns) per score_columns program
HIST_BLOCK = 8  # history items per row compared at once in score_columns
# ``score_groups``' first kernel (one user a program: the user in row 0 of a 16-row tl.dot operand,
# 15 rows of zeros) measured on one H200 (2026-12-03, call U, 4,096 users x 22 groups): D = 64
# 2.11 ms against score_columns' 2.32; D = 100 4.20 against 2.81. The kernel now scores the pairs
# sorted by group, several users a group tile: at (16, 4) 0.712 ms (D = 64) and 0.876 (D = 100)
# against score_columns' 2.32 and 2.81 (call W's GPU test, bit-identical at both).
# ``EVAL_SCORE_GROUPS=0`` (read at import) takes score_columns instead (a device comparison).
SCORE_GROUPS = os.environ.get("EVAL_SCORE_GROUPS", "1") != "0"
# score_groups' launch: (pairs per program: the rows of its tl.dot, a power of two >= 16; warps).
# Measured on one H200 (call W, 8,192 users x 22 random groups of 207,649 items, D = 64): (32, 2)
# 0.345 ms, the fastest of 9 ((16, 1) 0.353, (16, 4) 0.414, (64, 8) 0.720); score_columns 7.02.
# With history (the GPU test's ~20 items a user) (16, 4) was faster (0.712 ms in W, 2.0 at (32, 2)
# in X and Y), but a beauty-like split at batch 16,384 took 0.639 s at (32, 2) and 0.680 at (16, 4)
# (call Y, one process each, the same call).
# ``EVAL_SCORE_GROUPS_TILES="r,w"`` (read at import) overrides it.
SCORE_GROUPS_TILES = tuple(int(x) for x in os.environ.get("EVAL_SCORE_GROUPS_TILES", "32,2").split(","))


@triton.jit
def _group_max_kernel(
    U, C, Out, B, D, lo, hi, G, stride_u, stride_c, stride_o, tiles_per_program,
    BLOCK_B: tl.constexpr, GROUP: tl.constexpr, TILE_GROUPS: tl.constexpr, BLOCK_D: tl.constexpr,
    K_CHUNK: tl.constexpr, EXPLICIT_FMA: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (user block, run of tiles of TILE_GROUPS groups): Out[users, g] = max of the users'
    scores over group g's columns (PRECISION "ieee": the exact FMA chain; "tf32": tensor cores)."""
    pid_b, pid_g = tl.program_id(0), tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = offs_b < B
    offs_kc = tl.arange(0, K_CHUNK)
    TILE: tl.constexpr = TILE_GROUPS * GROUP
    if BLOCK_D == K_CHUNK:  # one dot per tile: the users' block is loaded once for every tile
        u_all = tl.load(U + offs_b[:, None].to(tl.int64) * stride_u + offs_kc[None, :],
                        mask=b_mask[:, None] & (offs_kc < D)[None, :], other=0.0)  # (BLOCK_B, K_CHUNK)
    for t in range(tiles_per_program):
        g0 = (pid_g * tiles_per_program + t) * TILE_GROUPS  # the tile's first group
        offs_v = lo + g0 * GROUP + tl.arange(0, TILE)  # the tile's global columns
        v_mask = offs_v < hi
        acc = tl.zeros((BLOCK_B, TILE), tl.float32)
        if EXPLICIT_FMA:  # acc = fma(u[:, k], c[:, k], acc), k = 0 .. BLOCK_D - 1
            for k in range(BLOCK_D):
                u_k = tl.load(U + offs_b.to(tl.int64) * stride_u + k, mask=b_mask & ((offs_b * 0 + k) < D), other=0.0)
                c_k = tl.load(C + offs_v.to(tl.int64) * stride_c + k, mask=v_mask & ((offs_v * 0 + k) < D), other=0.0)
                acc = tl.fma(u_k[:, None], c_k[None, :], acc)
        else:  # fp32 ieee dots, K_CHUNK of the head dim each, accumulating into one another
            for k0 in range(0, BLOCK_D, K_CHUNK):
                d_mask = (k0 + offs_kc) < D
                if BLOCK_D == K_CHUNK:
                    u = u_all
                else:
                    u = tl.load(U + offs_b[:, None].to(tl.int64) * stride_u + (k0 + offs_kc)[None, :],
                                mask=b_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_B, K_CHUNK)
                c = tl.load(C + offs_v[:, None].to(tl.int64) * stride_c + (k0 + offs_kc)[None, :],
                            mask=v_mask[:, None] & d_mask[None, :], other=0.0)  # (TILE, K_CHUNK)
                acc = tl.dot(u, tl.trans(c), acc, input_precision=PRECISION)
        acc = tl.where(v_mask[None, :], acc, float("-inf"))  # columns past hi (0 * inf would be NaN)
        acc = tl.reshape(acc, (BLOCK_B, TILE_GROUPS, GROUP))
        has_nan = tl.max((acc != acc).to(tl.int32), axis=2) > 0  # noqa: PLR0124 (x != x: NaN)
        group_max = tl.max(acc, axis=2)
        group_max = tl.where(has_nan, float("nan"), group_max)  # tl.max may drop NaN: put it back
        offs_g = g0 + tl.arange(0, TILE_GROUPS)
        tl.store(Out + offs_b[:, None].to(tl.int64) * stride_o + offs_g[None, :], group_max,
                 mask=b_mask[:, None] & (offs_g < G)[None, :])


@triton.jit
def _score_columns_kernel(
    U, C, Rows, Cols, Out, HistItems, HistStart, HistCount, P, M, V, D, stride_u, stride_c,
    BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HAS_HIST: tl.constexpr,
    HIST_BLOCK: tl.constexpr,
):
    """Program (block of pairs' rows, block of columns): Out[p, m] = score(Rows[p], Cols[p, m]), one
    sequential FMA chain over k = 0 .. BLOCK_D - 1 from 0; -inf on padding and history columns."""
    pid_p, pid_m = tl.program_id(0), tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    p_mask = offs_p < P
    pm_mask = p_mask[:, None] & (offs_m < M)[None, :]
    rows = tl.load(Rows + offs_p, mask=p_mask, other=0)  # (BLOCK_P,) user rows
    cols = tl.load(Cols + offs_p[:, None].to(tl.int64) * M + offs_m[None, :], mask=pm_mask, other=-1)
    valid = (cols >= 0) & (cols < V)  # padding columns (outside [0, V)) are never loaded
    safe = tl.where(valid, cols, 0)
    acc = tl.zeros((BLOCK_P, BLOCK_M), tl.float32)
    for k in range(BLOCK_D):  # the chain group_max's tile computes (k >= D: fma(0, 0, acc), as its padding)
        k_ok = (offs_p * 0 + k) < D  # (a tensor: the interpreter refuses a scalar in a mask)
        u_k = tl.load(U + rows.to(tl.int64) * stride_u + k, mask=p_mask & k_ok, other=0.0)
        c_k = tl.load(C + safe.to(tl.int64) * stride_c + k, mask=pm_mask & valid & k_ok[:, None], other=0.0)
        acc = tl.fma(u_k[:, None], c_k, acc)
    seen = tl.zeros((BLOCK_P, BLOCK_M), tl.int1)
    if HAS_HIST:  # user rows[p]'s history: HistItems[HistStart[r] : HistStart[r] + HistCount[r]]
        start = tl.load(HistStart + rows, mask=p_mask, other=0)
        count = tl.load(HistCount + rows, mask=p_mask, other=0)
        for h0 in range(0, tl.max(count, axis=0), HIST_BLOCK):  # HIST_BLOCK items of each row at a time
            offs_h = h0 + tl.arange(0, HIST_BLOCK)
            h_mask = p_mask[:, None] & (offs_h[None, :] < count[:, None])  # (BLOCK_P, HIST_BLOCK)
            item = tl.load(HistItems + start[:, None] + offs_h[None, :], mask=h_mask, other=0)
            hit = (cols[:, :, None] == item[:, None, :]) & h_mask[:, None, :]  # (BLOCK_P, BLOCK_M, HIST_BLOCK)
            seen = seen | (tl.max(hit.to(tl.int32), axis=2) > 0)
    acc = tl.where(valid & ~seen, acc, float("-inf"))
    tl.store(Out + offs_p[:, None].to(tl.int64) * M + offs_m[None, :], acc, mask=pm_mask)


@triton.jit
def _score_groups_kernel(
    U, C, PairRows, PairGroups, PairOut, Out, HistItems, HistStart, HistCount, N, lo, hi, D, stride_u, stride_c,
    GROUP: tl.constexpr, BLOCK_D: tl.constexpr, K_CHUNK: tl.constexpr, ROWS: tl.constexpr, HAS_HIST: tl.constexpr,
):
    """Program (ROWS consecutive (user, group) pairs of the N sorted by group): each distinct group
    among them is read once as a (GROUP, D) tile and scored against all ROWS users by one fp32
    ieee tl.dot (group_max's arithmetic: each score its own FMA chain over the head dim); the
    rows of the pairs that asked for it are stored, Out[PairOut[r], i] = the score of user
    PairRows[r] and column lo + g * GROUP + i; -inf on columns >= hi and on the user's history."""
    pid = tl.program_id(0)
    offs_r = pid * ROWS + tl.arange(0, ROWS)
    r_ok = offs_r < N
    users = tl.load(PairRows + offs_r, mask=r_ok, other=0)
    groups = tl.load(PairGroups + offs_r, mask=r_ok, other=-1)
    outs = tl.load(PairOut + offs_r, mask=r_ok, other=0)
    if HAS_HIST:
        start = tl.load(HistStart + users, mask=r_ok, other=0)
        count = tl.load(HistCount + users, mask=r_ok, other=0)
    offs_i = tl.arange(0, GROUP)
    offs_kc = tl.arange(0, K_CHUNK)
    for j in range(ROWS):
        idx = tl.minimum(pid * ROWS + j, N - 1)
        g = tl.load(PairGroups + idx)
        prev = tl.load(PairGroups + tl.maximum(idx - 1, 0))
        if (pid * ROWS + j < N) & ((j == 0) | (g != prev)):  # the first pair of a run of group g here
            mine = r_ok & (groups == g)
            cols = lo + g * GROUP + offs_i  # (GROUP,) global columns
            c_ok = cols < hi
            acc = tl.zeros((ROWS, GROUP), tl.float32)
            for k0 in range(0, BLOCK_D, K_CHUNK):
                d_ok = (k0 + offs_kc) < D
                u = tl.load(U + users[:, None].to(tl.int64) * stride_u + (k0 + offs_kc)[None, :],
                            mask=r_ok[:, None] & d_ok[None, :], other=0.0)  # (ROWS, K_CHUNK)
                c = tl.load(C + cols[:, None].to(tl.int64) * stride_c + (k0 + offs_kc)[None, :],
                            mask=c_ok[:, None] & d_ok[None, :], other=0.0)  # (GROUP, K_CHUNK)
                acc = tl.dot(u, tl.trans(c), acc, input_precision="ieee")
            seen = (offs_r[:, None] < 0) & (offs_i[None, :] < 0)  # (ROWS, GROUP) False
            if HAS_HIST:
                n_h = tl.max(tl.where(mine, count, 0))
                for h in range(0, n_h):  # one history item of every row at a time
                    item = tl.load(HistItems + start + h, mask=mine & (h < count), other=-1)
                    seen = seen | (cols[None, :] == item[:, None])
            score = tl.where(c_ok[None, :] & ~seen, acc, float("-inf"))
            tl.store(Out + outs[:, None].to(tl.int64) * GROUP + offs_i[None, :], score, mask=mine[:, None])


def _block_d(d: int) -> int:
    """The head dim padded to a power of two >= 16 (masked loads fill the rest with zeros)."""
    return max(16, triton.next_power_of_2(d))


def _n_groups(w: int, group: int) -> int:
    """Groups of a chunk of ``w`` columns: the last one may be partial."""
    return -(-w // group)


def _check_operands(users: torch.Tensor, catalog: torch.Tensor) -> None:
    for name, t in (("users", users), ("catalog", catalog)):
        if t.dtype != torch.float32 or t.ndim != 2 or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous 2-D float32 tensor, got {t.dtype} {tuple(t.shape)}")
    if users.shape[1] != catalog.shape[1]:
        raise ValueError(f"users are (B, {users.shape[1]}) but the catalog is (V, {catalog.shape[1]})")


def group_max(users: torch.Tensor, catalog: torch.Tensor, lo: int, hi: int, group: int = 64, *,
              explicit_fma: bool | None = None, tiles: tuple[int, int, int, int] | None = None,
              precision: str = "ieee") -> torch.Tensor:
    """(B, G) fp32, G = ceil((hi - lo) / group): [b, g] = max of users[b] . catalog[j] over the
    contiguous columns j in [lo + g * group, min(lo + (g + 1) * group, hi)); NaN if any is NaN.

    ``users`` (B, D), ``catalog`` (V, D) the whole catalog, fp32 contiguous, 0 <= lo < hi <= V;
    ``group`` a power of two >= 16. ``explicit_fma``: the tile as the FMA chain written out
    instead of tl.dot (default ``DEFAULT_EXPLICIT_FMA``). ``tiles``: (users per program, groups
    per tile, tiles per program, warps), default ``TILES`` (``TF32_TILES`` for "tf32").
    ``precision``: "ieee", the exact fp32 FMA chain (module docstring); "tf32", tl.dot on TF32
    tensor cores (inputs kept to 10 fraction bits, fp32 accumulation): APPROXIMATE maxima, within
    ``prefilter_eps(D, **TF32_EPS_ARGS)`` / 2 * |u| * max |c| of the exact ones, the prefilter's
    first stage (``prefilter_chunk_top``). The scores are never stored.
    """
    _check_operands(users, catalog)
    (B, D), V = users.shape, catalog.shape[0]
    if not 0 <= lo < hi <= V:
        raise ValueError(f"need 0 <= lo < hi <= V = {V}, got lo={lo}, hi={hi}")
    if group < 16 or group & (group - 1):
        raise ValueError(f"group must be a power of two >= 16, got {group}")
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"precision must be 'ieee' or 'tf32', got {precision!r}")
    block_b, tile_groups, tiles_per_program, num_warps = tiles or (TF32_TILES if precision == "tf32" else TILES)
    G = _n_groups(hi - lo, group)
    out = torch.empty((B, G), dtype=torch.float32, device=users.device)
    if B == 0:
        return out
    block_d = _block_d(D)
    grid = (triton.cdiv(B, block_b), triton.cdiv(G, tile_groups * tiles_per_program))
    _group_max_kernel[grid](
        users, catalog, out, B, D, lo, hi, G, users.stride(0), catalog.stride(0), out.stride(0), tiles_per_program,
        BLOCK_B=block_b, GROUP=group, TILE_GROUPS=tile_groups, BLOCK_D=block_d, K_CHUNK=min(block_d, K_CHUNK),
        EXPLICIT_FMA=(DEFAULT_EXPLICIT_FMA if explicit_fma is None else explicit_fma) and precision == "ieee",
        PRECISION=precision, num_warps=num_warps)
    return out


def score_columns(users: torch.Tensor, catalog: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                  hist_items: torch.Tensor | None = None, hist_start: torch.Tensor | None = None,
                  hist_count: torch.Tensor | None = None) -> torch.Tensor:
    """(P, M) fp32: [p, m] = users[rows[p]] . catalog[cols[p, m]] by ``group_max``'s arithmetic
    (one FMA chain over the head dim from 0, module docstring), -inf where ``cols[p, m]`` is
    outside [0, V) (padding) or is one of user ``rows[p]``'s history columns.

    ``rows`` (P,) int64 rows of ``users``; ``cols`` (P, M) int64 global catalog columns. History,
    CSR: user b's columns are ``hist_items[hist_start[b] : hist_start[b] + hist_count[b]]``
    (int64, any order, duplicates allowed); ``hist_items`` None: no masking.
    """
    _check_operands(users, catalog)
    D, V = users.shape[1], catalog.shape[0]
    P, M = cols.shape
    if rows.shape != (P,):
        raise ValueError(f"rows must be ({P},), got {tuple(rows.shape)}")
    out = torch.empty((P, M), dtype=torch.float32, device=users.device)
    if P == 0 or M == 0:
        return out
    rows, cols = rows.to(torch.int64).contiguous(), cols.to(torch.int64).contiguous()
    has_hist = hist_items is not None
    if has_hist:
        hist = [t.to(device=users.device, dtype=torch.int64).contiguous() for t in (hist_items, hist_start, hist_count)]
        if hist[0].numel() == 0:
            has_hist = False
    if not has_hist:
        hist = [rows, rows, rows]  # unread (HAS_HIST=False)
    grid = (triton.cdiv(P, BLOCK_P), triton.cdiv(M, BLOCK_M))
    _score_columns_kernel[grid](
        users, catalog, rows, cols, out, *hist, P, M, V, D, users.stride(0), catalog.stride(0),
        BLOCK_P=BLOCK_P, BLOCK_M=BLOCK_M, BLOCK_D=_block_d(D), HAS_HIST=has_hist,
        HIST_BLOCK=HIST_BLOCK, num_warps=4)
    return out


def score_groups(users: torch.Tensor, catalog: torch.Tensor, rows: torch.Tensor, groups: torch.Tensor, lo: int,
                 hi: int, group: int = 64, hist_items: torch.Tensor | None = None,
                 hist_start: torch.Tensor | None = None, hist_count: torch.Tensor | None = None) -> torch.Tensor:
    """(P, NG * group) fp32: [p, j * group + i] = users[rows[p]] . catalog[c], c = lo + groups[p, j]
    * group + i, by ``group_max``'s tile arithmetic (module docstring: the number ``score_columns``
    gives), -inf where c >= hi or c is one of user ``rows[p]``'s history columns (CSR as in
    ``score_columns``). ``groups`` (P, NG) int64 group indices of the range starting at ``lo``
    (0 <= g < ceil((hi - lo) / group)). ``score_columns`` for whole contiguous groups: the
    (user, group) pairs are sorted by group, and each program takes ``SCORE_GROUPS_TILES[0]`` of
    them: each distinct group among those is read once as a (group, D) tile and scored against
    all their users by one tl.dot (a batch's users share their candidate groups: ~55 users a group
    for 8,192 users x 22 of 3,245 groups even when drawn at random), where score_columns gathers
    the catalog column by column."""
    if not SCORE_GROUPS:  # the same numbers by score_columns
        cols = (lo + groups[:, :, None].to(torch.int64) * group + torch.arange(group, device=groups.device)).flatten(1)
        return score_columns(users, catalog, rows, torch.where(cols < hi, cols, -1), hist_items, hist_start, hist_count)
    _check_operands(users, catalog)
    D = users.shape[1]
    P, NG = groups.shape
    if rows.shape != (P,):
        raise ValueError(f"rows must be ({P},), got {tuple(rows.shape)}")
    if group < 16 or group & (group - 1):
        raise ValueError(f"group must be a power of two >= 16, got {group}")
    out = torch.empty((P, NG * group), dtype=torch.float32, device=users.device)
    if P == 0 or NG == 0:
        return out
    pair_groups, order = groups.to(torch.int64).flatten().sort()  # PairOut: a pair's row of out viewed (P * NG, group)
    pair_rows = rows.to(torch.int64)[order // NG]
    has_hist = hist_items is not None and hist_items.numel() > 0
    hist = ([t.to(device=users.device, dtype=torch.int64).contiguous() for t in (hist_items, hist_start, hist_count)]
            if has_hist else [order, order, order])  # unread without history
    block_d = _block_d(D)
    per_program, num_warps = SCORE_GROUPS_TILES
    _score_groups_kernel[(triton.cdiv(P * NG, per_program),)](
        users, catalog, pair_rows, pair_groups, order, out, *hist, P * NG, lo, hi, D, users.stride(0),
        catalog.stride(0), GROUP=group, BLOCK_D=block_d, K_CHUNK=min(block_d, K_CHUNK), ROWS=per_program,
        HAS_HIST=has_hist, num_warps=num_warps)
    return out


def target_scores(users: torch.Tensor, catalog: torch.Tensor, targets_col: torch.Tensor,
                  hist_items: torch.Tensor | None = None, hist_start: torch.Tensor | None = None,
                  hist_count: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) fp32 score of each user's target column (``score_columns`` with M = 1): -inf where the
    target is in the user's history or outside [0, V)."""
    B = users.shape[0]
    rows = torch.arange(B, device=users.device)
    return score_columns(users, catalog, rows, targets_col.to(torch.int64).reshape(B, 1),
                         hist_items, hist_start, hist_count)[:, 0]


def history_csr(rows: torch.Tensor, cols: torch.Tensor,
                n_users: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hist_items, hist_start, hist_count) of history pairs (``rows`` in [0, n_users), catalog
    ``cols``), without a host sync: pairs sorted by row (stable), counts by a scatter-add."""
    rows = rows.to(torch.int64)
    order = torch.argsort(rows, stable=True)
    count = torch.zeros(n_users, dtype=torch.int64, device=rows.device).scatter_add_(0, rows, torch.ones_like(rows))
    return cols.to(torch.int64)[order], torch.cumsum(count, 0) - count, count


def _pair_rows(hist: tuple[torch.Tensor, torch.Tensor, torch.Tensor], n_rows: int) -> torch.Tensor:
    """The row of each entry of ``hist``'s items (CSR: counts in row order, summing to the items)."""
    items, count = hist[0], hist[2].to(device=hist[0].device, dtype=torch.int64)
    return torch.repeat_interleave(torch.arange(n_rows, device=items.device), count, output_size=items.numel())


def _repair_poisoned(m: torch.Tensor, users: torch.Tensor, catalog: torch.Tensor, lo: int, hi: int, group: int,
                     hist: tuple[torch.Tensor, torch.Tensor, torch.Tensor], pair_rows: torch.Tensor) -> None:
    """In place on the (B, G) group maxima ``m`` of unmasked scores: each group that holds a history
    pair of its row ("poisoned": its max may be a masked item) gets its exact max with the history
    at -inf (``score_columns``). ``pair_rows``: the row of each history entry. Pairs outside [lo,
    hi) are clamped to an edge group and recompute its max; a group poisoned twice gets the same
    value twice."""
    items = hist[0].to(device=m.device, dtype=torch.int64)
    G = m.shape[1]
    g_h = torch.div(items - lo, group, rounding_mode="floor").clamp(0, G - 1)
    redo = score_groups(users, catalog, pair_rows, g_h[:, None], lo, hi, group, *hist).amax(dim=1)
    m.index_put_((pair_rows, g_h), redo)


def fused_chunk_top(users: torch.Tensor, catalog: torch.Tensor, lo: int, hi: int, k: int,
                    hist: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, sentinel: int,
                    group: int = 64, *, pair_rows: torch.Tensor | None = None) -> ChunkTop:
    """``chunk_top(scores, k, lo=lo, sentinel=sentinel, group=group)`` of the chunk ``scores =
    users @ catalog[lo:hi].T`` with each user's history columns at -inf, without the scores.

    ``hist``: (hist_items, hist_start, hist_count), each user's history columns (global) in CSR
    (``history_csr``), in user order: hist_start = exclusive cumsum of hist_count, and
    hist_count.sum() = len(hist_items) (every entry is a pair of the batch); None: no history.
    ``pair_rows`` (``prefilter_chunk_top``'s rescue of a few rows): the row of each entry of
    hist_items instead, which need not follow the counts (an entry of another row recomputes this
    row's exact max of the entry's group, a right value as well); the rows' own entries must
    still be hist_items[hist_start[b] : hist_start[b] + hist_count[b]].
    Values and tie flag are chunk_top's; cols too up to the choice among tied items (module
    docstring). No host sync; the (B, hi - lo) scores exist only for small chunks (at most
    (k + 1) groups, where chunk_top itself sorts the whole chunk).
    """
    B, device = users.shape[0], users.device
    w = hi - lo
    G = _n_groups(w, group)
    hist_args = (None, None, None) if hist is None else tuple(hist)
    if G <= k + 1:  # small chunk: score it all, chunk_top's own fallback
        cols = torch.arange(lo, hi, device=device).expand(B, w)
        scores = score_columns(users, catalog, torch.arange(B, device=device), cols, *hist_args)
        return chunk_top(scores, k, lo=lo, sentinel=sentinel, group=group)
    offsets = torch.arange(group, device=device)
    m = group_max(users, catalog, lo, hi, group)  # (B, G), history not masked
    if hist is not None and hist[0].numel():
        _repair_poisoned(m, users, catalog, lo, hi, group, hist, _pair_rows(hist, B) if pair_rows is None else pair_rows)
    gmax, best = m.topk(k + 1, dim=1)  # (B, k + 1), sorted
    cand = (lo + best[:, :k, None] * group + offsets).flatten(1)  # (B, k * group) global columns
    scores = score_groups(users, catalog, torch.arange(B, device=device), best[:, :k], lo, hi, group, *hist_args)
    values, pos = scores.topk(k + 1, dim=1)
    cols = cand.gather(1, pos)
    after = torch.maximum(values[:, k], gmax[:, k])  # best value not taken
    values, cols = values[:, :k], cols[:, :k]
    kth = values[:, k - 1]
    tie = torch.where((kth > NEG_INF) & (after == kth), kth, NEG_INF)
    cols = torch.where(cols < hi, cols, sentinel)
    return ChunkTop(values, cols, tie)


def prefilter_eps(d: int, r: float = 2.0 ** -8, rounded_output: bool = True) -> float:
    """``prefilter_chunk_top``'s ``eps`` for head dim ``d``: twice the bound beta(d) of its
    docstring, |approx - exact fp32 chain| <= beta(d) * sum_i |u_i c_i|. Defaults: ``bf16_scores``
    (inputs rounded within r = 2^-8, output rounded too; 0.02355 at d = 64); ``group_max``'s
    "tf32" (``TF32_EPS_ARGS``): r = 2^-10 (TF32 keeps 10 fraction bits; 2^-10 also covers truncation), fp32 output, no (c)
    term (0.00394 at d = 64)."""
    g23, g24 = (d * v / (1 - d * v) for v in (2.0 ** -23, 2.0 ** -24))  # gamma_d of fp32 sums, FMAs
    return 2 * ((r if rounded_output else 0.0) + (1 + r) * (2 * r + r * r) + (1 + r) ** 3 * g23 + g24)


TF32_EPS_ARGS = {"r": 2.0 ** -10, "rounded_output": False}  # ``prefilter_eps`` of ``group_max``'s "tf32"


def bf16_scores(users: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """An approximation of ``users @ rows.T`` for ``prefilter_chunk_top(approx=...)``, the case its
    margin's derivation spells out (tests check the bound on it): bf16 inputs, fp32
    accumulation, bf16 output (a tensor-core GEMM on CUDA). cuBLAS's reduced-precision (bf16)
    split-K reductions, allowed by torch's default, are refused for the call: the bound assumes
    fp32 accumulation throughout."""
    matmul = torch.backends.cuda.matmul
    allowed = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        return users.bfloat16() @ rows.bfloat16().T
    finally:
        matmul.allow_bf16_reduced_precision_reduction = allowed


def prefilter_chunk_top(users: torch.Tensor, catalog: torch.Tensor, lo: int, hi: int, k: int,
                        hist: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, sentinel: int,
                        group: int = 64, *, candidates: int | None = None, eps: float | None = None,
                        approx=None, chunk_size: int = 65536, rescue: int = 0) -> tuple[ChunkTop, torch.Tensor]:
    """``(fused_chunk_top(users, catalog, lo, hi, k, hist, sentinel, group), overflow)``, the fp32
    FMA work spent on a few candidate groups only: rows where ``overflow`` (B,) bool is False hold
    exactly fused_chunk_top's values and tie flag (cols up to the choice among tied items); rows
    where it is True hold anything and must be rescanned by an exact path.

    1. Approximate group maxima gmax (B, G) over the whole [lo, hi), history NOT masked: by default
       ``group_max(..., precision="tf32")`` (TF32 tensor cores, the scores never stored; eps
       default ``prefilter_eps(D, **TF32_EPS_ARGS)``); or, given ``approx(users, rows)`` -> (B, w)
       approximate scores (the tests' adversaries, ``bf16_scores``; eps default
       ``prefilter_eps(D)``), the max of each contiguous group of its scores, ``chunk_size``
       columns at a time (rounded down to a multiple of ``group``). Then the groups holding a
       history pair of their row get their EXACT max with the history at -inf (``_repair_poisoned``,
       as fused_chunk_top does), which is within any margin of itself.
    2. margin[b, g] = eps * |users[b]| * max_{j in g} |catalog[j]| + floor, |.| the 2-norm, bounds
       |approx - exact| on every column of group g (derivation below); lb = gmax - margin, ub =
       gmax + margin (-inf stays -inf: a group all history or past hi).
    3. tau = the (k + 1)-th largest lb: k + 1 groups hold an item with exact score >= tau, so the
       (k + 1)-th best exact score T >= tau, and an item scoring >= T lies in a group with ub >= T
       >= tau. The ``candidates`` = C groups of largest ub hold every such item unless the
       (C + 1)-th largest ub is >= tau (and > -inf: groups of -inf only are never needed): then
       the row OVERFLOWS; so does a row with a NaN group max or a NaN margin (a NaN or inf input,
       or a norm >= 2^60, where the bound is not claimed; a NaN catalog row makes every row overflow).
    4. The C groups' columns rescored by ``score_columns`` (history -inf), top-(k + 1): the k best
       and the best value not taken (exact: every item >= T is a candidate), the tie flag and the
       sentinel as fused_chunk_top. G <= C (a small range): fused_chunk_top itself, no overflow.
    5. ``rescue`` = R > 0: the first R overflow rows (``topk`` of the flags: a fixed shape) are
       redone by fused_chunk_top (the exact FMA chain over the whole range, R rows) and their flag
       cleared; only rows past the first R stay flagged. (The evaluation rescues in the CUDA graph, so a batch with
       at most R overflow rows needs no host-side fix-up, which costs a sync.)
    No host sync, no data-dependent shape (CUDA-graph capturable).

    eps, for bf16 (``bf16_scores``). For u = users[b], c = catalog[j], x = sum_i u_i c_i (real),
    S = sum_i |u_i c_i| <= |u| |c| (Cauchy-Schwarz), r = 2^-8 (bf16 round-to-nearest: 8
    significand bits; NOT 2^-9), gamma_n(v) = n v / (1 - n v):
    (a) bf16 inputs u_i (1 + a_i), c_i (1 + b_i), |a_i|, |b_i| <= r; their product is exact in fp32
        (8 + 8 <= 24 bits): y = sum of the products, |y - x| <= (2r + r^2) S, and the products'
        magnitudes sum to <= (1 + r)^2 S.
    (b) fp32 accumulation in any order or blocking, each addition within 2^-23 relative (round to
        nearest is 2^-24; 2^-23 also covers the truncation tensor cores use): the sum s has
        |s - y| <= gamma_D(2^-23) (1 + r)^2 S.
    (c) bf16 output a: |a - s| <= r |s| <= r (S + |y - x| + |s - y|).
    (d) the exact score e, score_columns' D fp32 FMAs: |e - x| <= gamma_D(2^-24) S.
    Sum: |a - e| <= beta(D) S, beta(D) = r + (1 + r)(2r + r^2) + (1 + r)^3 gamma_D(2^-23)
    + gamma_D(2^-24) = 0.011776 at D = 64 (0.012503 at D = 4096), about 3r; eps = 2 beta(D), the
    factor 2 a safety margin that also absorbs the fp32 rounding of the norms, margin, lb and ub
    (O(D 2^-24) relative) and, alone, an accumulator as coarse as 2^-13 at D = 64. TF32 (the
    default): r = 2^-10 (10 fraction bits kept, rounded or truncated), the product of two TF32
    inputs exact in fp32, fp32 output: no (c) term (``TF32_EPS_ARGS``). The bound assumes normal
    numbers; gradual underflow or flush-to-zero (inputs, products, sums below 2^-126) adds at
    most 2^-126 (1 + r)(sqrt(D) (|u| + |c|) + 4 D), twice that covered by floor = 2^-122
    (sqrt(D) (|u| + max_g |c|) + D). A custom ``approx`` must satisfy |approx - exact| <= margin
    itself (tests inject adversarial ones) and return a (B, w) tensor. The max of approximations
    each within its column's margin is within the group's margin of the exact max.
    ``candidates`` >= k + 1, default 2 (k + 1).
    """
    _check_operands(users, catalog)
    (B, D), V, device = users.shape, catalog.shape[0], users.device
    if not 0 <= lo < hi <= V:
        raise ValueError(f"need 0 <= lo < hi <= V = {V}, got lo={lo}, hi={hi}")
    C = 2 * (k + 1) if candidates is None else candidates
    if C < k + 1:
        raise ValueError(f"candidates must be >= k + 1 = {k + 1}, got {C}")
    if eps is None:
        eps = prefilter_eps(D, **TF32_EPS_ARGS) if approx is None else prefilter_eps(D)
    G = _n_groups(hi - lo, group)
    if G <= C:  # every group is a candidate: the exact path, nothing to prefilter
        return fused_chunk_top(users, catalog, lo, hi, k, hist, sentinel, group), torch.zeros(
            B, dtype=torch.bool, device=device)
    hist_args = (None, None, None) if hist is None else tuple(hist)
    has_hist = hist is not None and hist[0].numel() > 0
    if approx is None:
        gmax = group_max(users, catalog, lo, hi, group, precision="tf32")
    else:
        gmax = torch.empty((B, G), dtype=torch.float32, device=device)
        step = max(group, chunk_size - chunk_size % group)  # chunks of whole groups
        for a in range(lo, hi, step):
            w = min(step, hi - a)
            s = approx(users, catalog[a:a + w]).float()  # (B, w) approximate scores
            n = _n_groups(w, group)
            if n * group > w:  # the range's last group, cut at hi
                s = torch.cat([s, s.new_full((B, n * group - w), NEG_INF)], dim=1)
            g0 = (a - lo) // group
            gmax[:, g0:g0 + n] = s.reshape(B, n, group).amax(dim=2)  # NaN propagates
    if has_hist:  # the poisoned groups' exact max, history masked: their bound holds with margin 0
        _repair_poisoned(gmax, users, catalog, lo, hi, group, hist, _pair_rows(hist, B))
    un = torch.linalg.vector_norm(users, dim=1)[:, None]  # (B, 1)
    cn = torch.linalg.vector_norm(catalog[lo:hi], dim=1)
    gn = torch.cat([cn, cn.new_zeros(G * group - (hi - lo))]).reshape(G, group).amax(dim=1)  # (G,)
    margin = eps * un * gn + 2.0 ** -122 * (D ** 0.5 * (un + gn) + D)  # (B, G)
    margin = torch.where((un < 2.0 ** 60) & (gn < 2.0 ** 60), margin, float("nan"))  # NaN, inf, huge: unclaimed
    lb, ub = gmax - margin, gmax + margin
    tau = lb.topk(k + 1, dim=1).values[:, k]  # (k + 1)-th largest lower bound
    ub_top, best = ub.topk(C + 1, dim=1)  # sorted, NaN first
    out = ub_top[:, C]  # the best upper bound left out
    overflow = ((out >= tau) & (out > NEG_INF)) | gmax.isnan().any(dim=1) | margin.isnan().any(dim=1)
    offsets = torch.arange(group, device=device)
    cand = (lo + best[:, :C, None] * group + offsets).flatten(1)  # (B, C * group) global columns
    exact = score_groups(users, catalog, torch.arange(B, device=device), best[:, :C], lo, hi, group,
                         *hist_args)  # the candidates, history at -inf
    top, pos = exact.topk(k + 1, dim=1)
    picked = torch.gather(cand, 1, pos[:, :k])
    kth, after = top[:, k - 1], top[:, k]  # after: the best value not taken, exact
    tie = torch.where((kth > NEG_INF) & (after == kth), kth, NEG_INF)
    result = ChunkTop(top[:, :k], torch.where(picked < hi, picked, sentinel), tie)
    if rescue > 0:
        result, overflow = _rescue(users, catalog, lo, hi, k, hist, sentinel, group, result, overflow, min(rescue, B))
    return result, overflow


def _rescue(users: torch.Tensor, catalog: torch.Tensor, lo: int, hi: int, k: int,
            hist: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, sentinel: int, group: int,
            result: ChunkTop, overflow: torch.Tensor, R: int) -> tuple[ChunkTop, torch.Tensor]:
    """``prefilter_chunk_top``'s step 5: the first R overflow rows redone by fused_chunk_top."""
    B, device = users.shape[0], users.device
    flag, pick = overflow.to(torch.int32).topk(R)  # the overflow rows first (any order among them)
    redo = flag > 0
    sub_hist, pair_rows = None, None
    if hist is not None and hist[0].numel():
        where = torch.zeros(B, dtype=torch.int64, device=device)
        where[pick] = torch.arange(R, device=device)
        # Each history entry's row among the picked; the entries of rows not picked go to row 0, where
        # they recompute row 0's own exact max of their group: a right value there too.
        pair_rows = where[_pair_rows(hist, B)]
        start, count = (t.to(device=device, dtype=torch.int64) for t in (hist[1], hist[2]))
        sub_hist = (hist[0], start[pick], count[pick])
    exact = fused_chunk_top(users[pick], catalog, lo, hi, k, sub_hist, sentinel, group, pair_rows=pair_rows)
    values, cols, tie = (t.clone() for t in result)
    values[pick] = torch.where(redo[:, None], exact.values, values[pick])
    cols[pick] = torch.where(redo[:, None], exact.cols, cols[pick])
    tie[pick] = torch.where(redo, exact.tie, tie[pick])
    done = torch.zeros_like(overflow)
    done[pick] = redo
    return ChunkTop(values, cols, tie), overflow & ~done
