"""Full-catalog evaluation of a model (and of the popularity baseline) on one split.

Both go through the same loop, so the baseline sees exactly the users, targets and history
masking the model sees: it differs only in how a batch of users is scored.

Streaming evaluation ("evaluation at the floor", issue 21.5; the default ``path``). A batch
("block") of B users is scored one catalog chunk at a time: per chunk one fp32 matmul writes a
(B, chunk) buffer, the block's history pairs that fall in the chunk are set to -inf in it, the
target's score is picked from it when the target is in the chunk, and the chunk's top-k
(``core.metrics.chunk_top``) joins the running top-k (``merge_top``, state ``CatalogTop``;
merged every ``_MERGE_EVERY`` = 8 chunks to save launches, so at most 8 (B, k) lists wait).
No (B, n_items) matrix exists; rank, Coverage and Surprisal all come from the
final state (``RankingMetrics.update_top``), with the same values as the dense path on the same
scores (tests/test_eval_streaming.py):
- ranks: 1 + #(top-k scores > target score), exact for rank <= max(ks), a miss beyond; the
  target's score comes from the same buffer as the other scores (a separately computed dot
  product may differ in the last bit, and ties count in the target's favour);
- tie rule: equal scores rank the lower item id first, in both paths (``core.metrics``);
  torch.topk leaves ties unspecified, so rows with a tie across the k-th place are redone with
  a stable sort (rare with real fp32 scores; never with the popularity baseline);
- scores stay fp32 (bf16 scores tie often and ties favour the target).
Chunk top-k (``chunk_top``): the max of each group of ``group_size`` (64) columns, top-(k+1)
of those maxima, then top-(k+1) over the k best groups' columns: the chunk is written once by
the matmul and read about once by the group max, instead of the several radix passes of a
torch.topk over the whole chunk. Groups are strided (group g: columns g, g + n, g + 2n, ...;
``core.metrics.group_maxima``) so the group max reads rows coalesced; contiguous groups of 64
ran at ~1 TB/s on the H200 (call C).

Sizes and memory: ``batch_size`` users per block (default 4096 on the streaming path) times
``chunk_size`` items (default 32768, ``DEFAULT_CHUNK``) fp32 is the one big buffer, 512 MiB at
the defaults whatever the catalog; the rest is O(B * (chunk / group + k * group)). Host syncs:
one per block (the NaN / tie-fix check, ``finish_top``), taken after the next block is queued and
waiting on an event after this block's flags (``send_flags``), so the device runs ahead of the
host; none per chunk (``history`` is sized on the host, and history pairs are masked by a
scatter-add that needs no split by chunk).
``path="dense"`` keeps the previous evaluation (a (B, n_items) matrix per batch,
``RankingMetrics.update``; default batch ``default_eval_batch_size(n, "dense")``, ~1 GiB) as
the reference and the "before" of ``experiments/bench/bench_eval.py``.

On the GPU (beauty-like, 729,576 users x 207,649 items, D = 64, one H200): the dense path takes
5.7 s per split (1,292 users per batch: 3.4 ms scoring, 6.0 ms metrics). The streaming path
moves 8 bytes per score through HBM (the matmul's write, the group max's read: 1.2 TB per
split, ~0.25 s at 4.8 TB/s), runs the fp32 matmul (19.4 TFLOP per split: 0.3-0.4 s at 50-67
fp32 TFLOP/s) and ~15 small kernels per (block, chunk) (179 blocks x 7 chunks, ~0.1 s of
launches, overlapped); ~0.6-1.0 s per split was expected. Measured on the H200: 2.76 s
(2026-12-02, call C), then 2.80 s for this loop against 3.61 s for the previous one in one call
(call E; experiments/bench/NOTES_speed.md). The fp32 GEMM runs at ~32 TFLOP/s (FFMA: scores
must stay fp32, so TF32/bf16 are no way out); a fused score + group-max kernel would be.
The prefilter (the default on CUDA for catalogs of at least 150,000 items, ``uses_prefilter``;
``EVAL_PREFILTER=0`` turns it off; ``eval_kernels.prefilter_chunk_top``): group maxima on TF32
tensor cores with a rigorous margin choose candidate groups, only those are scored exactly by
the fused path's arithmetic, a fixed number of uncertified rows a batch are redone exactly; the
same metrics, 0.742 s a beauty-like split against the matmul path's 1.259 s at batch 8,192,
0.617 s at 16,384 (call W).
Fused alternative (``EVAL_FUSED=1``, ``ModelChunks.fused``, core/eval_kernels.py): a Triton
kernel keeps each group's max of the scores in registers over the whole catalog, and only the
groups holding a history item and the k best groups are rescored (same FMA-chain arithmetic,
checked bit for bit on an H200); no (B, chunk) buffer. Measured slower than the matmul path
(2.84 vs 2.68 s a beauty-like split, call J) for 0.25 instead of 2.12 GiB: off by default.
Across ranks: ``merge_top`` merges the states of disjoint catalog parts, so ranks that each own
a catalog shard combine theirs: a distributed top-k (issue 22). A catalog-parallel model
(``evaluate_model`` sees a ``ShardedItemEmbedding``; ``sharded_scoring``) is evaluated so:
- every rank ranks EVERY user of the split, in the one-process batches (the body is replicated,
  and equal batch shapes keep the hidden states bit-identical to one process); the input
  lookup is ``SameIdsLookup`` (each rank fills its own rows, one all-reduce of (B, L, D));
- each rank scans only its columns [lo, hi) (``scan_catalog(lo=, hi=)``): history masked where
  it falls in the shard, the target's score on the rank that owns it;
- the (B, k) states are all-gathered, one (B, 2k + 4) float64 block per rank, and merged in
  rank order (``merge_ranks``); every rank then holds the same state, so the NaN check and the
  tie fix-up take the same branch everywhere: the rows ``needs_exact`` names are rescanned by
  every rank over its shard with the stable sort and those states merged the same way;
- every rank returns the one-process metrics (no ``reduce_metrics``). Per rank: its shard, one
  (B, chunk) score buffer, O(B x (k x K + L x D)) states and activations, and the metrics'
  O(n_items) Surprisal / Coverage vectors (scalars per item); never the table.
Exact as one process as long as a column's score is the same bit for bit whatever chunk it is
computed in (the same assumption as chunking within one process; on the CPU a (B, 1) or (B, 2)
matmul can round the last bit differently from a wider one).
Data-parallel runs (and the popularity baseline) split the users instead (``eval_shard``,
``reduce_metrics``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from core.data.batching import DeviceSequences, eval_batches, eval_order, history
from core.data.shards import SequenceData
from core.metrics import (
    CatalogTop,
    RankingMetrics,
    chunk_top,
    exact_top,
    merge_top,
    needs_exact,
    popularity_scores,
)
from core.parallel.collectives import DistContext, all_gather_rows, all_reduce

# Dense path: (B, n_items) fp32 scores per batch are the evaluation's big buffer: bound it at
# 2**28 floats (1 GiB), so a 10M-item catalog gets batches of ~26 users and a 20k-item one 4096.
_SCORE_BUDGET = 2**28
_MAX_EVAL_BATCH = 4096
PATHS = ("streaming", "dense")
DEFAULT_PATH = "streaming"
DEFAULT_CHUNK = 32768  # items per chunk: (4096, 32768) fp32 = 512 MiB
DEFAULT_GROUP = 64  # columns per group of chunk_top's first stage
_MERGE_EVERY = 8  # chunk states merged into the running state in batches of this many

# A chunk's scores: ``chunk(lo, hi) -> (B, hi - lo)`` fp32, a fresh tensor (masked in place).
ChunkScores = Callable[[int, int], torch.Tensor]


def default_eval_batch_size(n_items: int, path: str = DEFAULT_PATH) -> int:
    """Users per evaluation batch: 4096 on the streaming path (its buffer is (B, chunk)); on the
    dense path such that the (B, n_items) score matrix stays near 1 GiB."""
    if path == "streaming":
        return _MAX_EVAL_BATCH
    return max(1, min(_MAX_EVAL_BATCH, _SCORE_BUDGET // n_items))


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; full fp32 elsewhere (CPU bf16 is slow and not the protocol).
    No weight-cast cache: each weight is cast once per forward anyway, and a cache must not
    outlive a captured region (``BatchGraphs``)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def count_train_users(data: SequenceData) -> int:
    """N of Surprisal: users with a non-empty training sequence (all of them after leave-one-out)."""
    return int((data.lengths() - 2 > 0).sum())


def chunk_ranges(lo: int, hi: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into consecutive (start, stop) column ranges of at most ``size``."""
    if size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {size}")
    return [(a, min(a + size, hi)) for a in range(lo, hi, size)]


def _mask_chunk(scores: torch.Tensor, seen: tuple[torch.Tensor, torch.Tensor] | None, lo: int) -> None:
    """Sets the history pairs (rows, item ids) that fall in this chunk (columns [lo, lo + width))
    to -inf in place, without a host sync: every pair adds to its (clamped) place, -inf inside
    the chunk and 0 outside it (x + 0 == x), so the pairs never need to be split by chunk on
    the host. (A score of +inf on a history item would become NaN and be refused as one.)
    A scatter-add on the flat chunk: adding 0s and -infs gives the same result in any order, so
    its atomics are exact; ``index_put_(accumulate=True)`` sorted the pairs first on CUDA
    (~0.25 ms a beauty-like batch of 4 chunks, call G's profile)."""
    if seen is None:
        return
    rows, items = seen
    width = scores.shape[1]
    cols = items - 1 - lo
    inside = (cols >= 0) & (cols < width)
    add = torch.where(inside, float("-inf"), 0.0).to(scores.dtype)
    scores.view(-1).scatter_add_(0, rows * width + cols.clamp(0, width - 1), add)


def _scan_fused(chunk: ModelChunks, n_users: int, *, n_items: int, k: int, targets: torch.Tensor | None,
                seen: tuple[torch.Tensor, torch.Tensor] | None, device, lo: int, hi: int, chunk_size: int,
                group_size: int, rows: torch.Tensor | None) -> CatalogTop:
    """``scan_catalog`` by the fused kernels (``ModelChunks.fused``): the whole range [lo, hi) in
    one ``fused_chunk_top`` (group maxima in registers, only candidates rescored; with
    ``PREFILTER``, ``prefilter_chunk_top``: the candidates picked from TF32 group maxima, up to
    ``PREFILTER_RESCUE`` uncertified rows a batch redone exactly in place), targets and
    the tie fix-up's rows scored by the same arithmetic (``score_columns``); no (B, chunk) scores
    except the fix-up's (rows, chunk_size) blocks."""
    from core.eval_kernels import fused_chunk_top, history_csr, prefilter_chunk_top, score_columns

    users, catalog = chunk.users, chunk.catalog
    hist = None if seen is None else history_csr(seen[0], seen[1] - 1, n_users)
    hist_args = () if hist is None else hist
    size = n_users if rows is None else len(rows)
    if targets is None:
        inside = torch.zeros(size, dtype=torch.bool, device=device)
        target = torch.full((size,), float("-inf"), device=device)
    else:
        t_col = targets.to(device=device, dtype=torch.int64) - 1
        t_col = t_col if rows is None else t_col[rows]
        inside = (t_col >= lo) & (t_col < hi)
        scored = torch.arange(n_users, device=device) if rows is None else rows  # users' rows, for their history
        target = torch.where(inside, score_columns(users, catalog, scored, t_col[:, None], *hist_args)[:, 0],
                             float("-inf"))
    if rows is None:
        if chunk.prefilter:
            (values, cols, tie), overflow = prefilter_chunk_top(
                users, catalog, lo, hi, k, hist, sentinel=n_items, group=group_size,
                candidates=PREFILTER_CANDIDATES, rescue=PREFILTER_RESCUE)
            nan = torch.isnan(values).any(dim=1)  # before the overflow rows' values go
            # An overflow row past the rescued ones (the bound could not certify its candidates) becomes
            # an unresolved tie at +inf: ``needs_exact`` names it and ``finish_top``'s fix-up rescans it.
            values = torch.where(overflow[:, None], float("inf"), values)
            tie = torch.where(overflow, float("inf"), tie)
        else:
            values, cols, tie = fused_chunk_top(users, catalog, lo, hi, k, hist, sentinel=n_items, group=group_size)
            nan = torch.isnan(values).any(dim=1)
        part = CatalogTop(values, cols, target, inside, tie, nan)
        return merge_top(CatalogTop.empty(size, k, n_items=n_items, device=device), part)  # the tie rule's order
    parts = [CatalogTop.empty(size, k, n_items=n_items, device=device)]
    no_tie = torch.full((size,), float("-inf"), device=device)
    for a, b in chunk_ranges(lo, hi, chunk_size):
        cols = torch.arange(a, b, device=device).expand(size, b - a)
        values, top_cols = exact_top(score_columns(users, catalog, rows, cols, *hist_args), k, lo=a, sentinel=n_items)
        parts.append(CatalogTop(values, top_cols, target, inside, no_tie, torch.isnan(values).any(dim=1)))
        if len(parts) == _MERGE_EVERY:
            parts = [merge_top(*parts)]
    return merge_top(*parts)


def scan_catalog(chunk: ChunkScores, n_users: int, *, n_items: int, k: int,
                 targets: torch.Tensor | None, seen: tuple[torch.Tensor, torch.Tensor] | None,
                 device, lo: int = 0, hi: int | None = None, chunk_size: int = DEFAULT_CHUNK,
                 group_size: int = DEFAULT_GROUP, rows: torch.Tensor | None = None) -> CatalogTop:
    """The streaming state of ``n_users`` users over catalog columns [lo, hi) (default: all).

    ``chunk(a, b)`` scores columns [a, b) of every user; ``targets`` (B,) item ids (None: no
    target, as for recommendations); ``seen`` the history pairs (rows, item ids) to mask.
    ``rows``: only these users, with an exact stable sort per chunk (the tie fix-up; the
    chunks are still scored for all users, so their scores are bit for bit the same).
    No tie fix-up and no host sync per chunk: see ``catalog_top``.
    """
    hi = n_items if hi is None else hi
    if getattr(chunk, "fused", False) and group_size >= 16 and group_size & (group_size - 1) == 0:
        return _scan_fused(chunk, n_users, n_items=n_items, k=k, targets=targets, seen=seen, device=device,
                           lo=lo, hi=hi, chunk_size=chunk_size, group_size=group_size, rows=rows)
    ranges = chunk_ranges(lo, hi, chunk_size)
    size = n_users if rows is None else len(rows)
    parts = [CatalogTop.empty(size, k, n_items=n_items, device=device)]
    t_col = None if targets is None else targets.to(device=device, dtype=torch.int64) - 1
    if t_col is None:  # no target (recommendations): the same empty target state for every chunk
        inside = torch.zeros(n_users, dtype=torch.bool, device=device)
        target = torch.full((n_users,), float("-inf"), device=device)
    for a, b in ranges:
        scores = chunk(a, b)  # (B, b - a) fp32
        _mask_chunk(scores, seen, a)
        if t_col is not None:
            inside = (t_col >= a) & (t_col < b)
            picked = scores.gather(1, (t_col - a).clamp(0, b - a - 1)[:, None]).squeeze(1)
            target = torch.where(inside, picked, float("-inf"))
        if rows is None:
            values, cols, tie = chunk_top(scores, k, lo=a, sentinel=n_items, group=group_size)
            held, part_target = inside, target
        else:
            values, cols = exact_top(scores[rows], k, lo=a, sentinel=n_items)
            tie = torch.full((size,), float("-inf"), device=device)
            held, part_target = inside[rows], target[rows]
        nan = torch.isnan(values).any(dim=1)  # topk and sort rank NaN first
        parts.append(CatalogTop(values, cols, part_target, held, tie, nan))
        if len(parts) == _MERGE_EVERY:  # one merge per few chunks: fewer launches, bounded memory
            parts = [merge_top(*parts)]
    return merge_top(*parts)


@dataclass(frozen=True)
class CatalogShard:
    """This rank's part of a catalog split over ranks (catalog-parallel): columns [lo, hi).

    Evaluation over a shard (``rank_split(shard=...)``): every rank ranks the SAME users in the
    same batches against its own columns only, and the ranks' streaming states are gathered
    and merged (``merge_ranks``): a distributed top-k, equal to one process's (module docstring
    of ``core.metrics``: ``merge_top`` is exact for disjoint parts)."""

    ctx: DistContext
    lo: int
    hi: int


def _pack(top: CatalogTop) -> torch.Tensor:
    """A state as one (B, 2k + 4) float64 block (one collective): fp32 values and int64 columns
    (< 2**53) are exact in float64, the flags 0/1."""
    return torch.cat([top.values.double(), top.cols.double(), top.target.double()[:, None],
                      top.has_target.double()[:, None], top.tie.double()[:, None], top.nan.double()[:, None]], 1)


def _unpack(block: torch.Tensor, k: int) -> CatalogTop:
    return CatalogTop(block[:, :k].float(), block[:, k:2 * k].long(), block[:, 2 * k].float(),
                      block[:, 2 * k + 1] > 0, block[:, 2 * k + 2].float(), block[:, 2 * k + 3] > 0)


def _merge_ranks(parts: list[CatalogTop]) -> CatalogTop:
    """The ranks' states (rank order) merged: ``merge_top`` (the tests break this one)."""
    return merge_top(*parts)


def merge_ranks(ctx: DistContext, top: CatalogTop) -> CatalogTop:
    """Every rank's state of the same B users over its catalog shard -> the state over the whole
    catalog, the same on every rank: one all-gather of (B, 2k + 4) float64 per rank (never a
    table), merged in rank order. ``top`` itself on one process."""
    if not ctx.enabled:
        return top
    k = top.values.shape[1]
    blocks = all_gather_rows(ctx, _pack(top), [top.values.shape[0]] * ctx.world)
    return _merge_ranks([_unpack(b, k) for b in blocks])


@dataclass
class PendingTop:
    """A batch's streaming state before its one host sync (``start_top``, ``finish_top``)."""

    top: CatalogTop
    fix: torch.Tensor  # (B,) bool: rows to rescan exactly (``needs_exact``)
    flags: torch.Tensor  # (2,) int64: any NaN (0 / 1), how many rows to fix
    rescan: Callable[[torch.Tensor], CatalogTop]  # rows -> their exact state
    host_flags: torch.Tensor | None = None  # ``send_flags``: the flags' pinned host copy ...
    ready: torch.cuda.Event | None = None  # ... and the event after it


def send_flags(pending: PendingTop) -> None:
    """On CUDA, starts the copy of ``pending``'s flags to pinned host memory, with an event
    after it: ``finish_top`` then waits for this batch's work only. A plain ``.tolist()`` in
    ``finish_top`` is queued behind everything queued before it, i.e. the next batch too, so the
    device drained every batch while the host waited, then idled while the host issued the next
    (call K, 2026-12-02: 12 ms a beauty-like batch, ~6 ms of it GPU work)."""
    if pending.flags.is_cuda:
        pending.host_flags = torch.empty(pending.flags.shape, dtype=pending.flags.dtype, pin_memory=True)
        pending.host_flags.copy_(pending.flags, non_blocking=True)
        pending.ready = torch.cuda.Event()
        pending.ready.record()


def start_top(chunk: ChunkScores, n_users: int, *, shard: CatalogShard | None = None,
              **scan_args) -> PendingTop:
    """``scan_catalog`` over the whole catalog (``shard``: this rank's columns [lo, hi), the
    ranks' states merged by ``merge_ranks``), with no host sync: the kernels are queued and
    the NaN / tie checks wait in ``finish_top``. ``rank_split`` finishes each batch after
    queuing the next one, so the GPU never waits for the host between batches."""
    combine = (lambda top: top) if shard is None else (lambda top: merge_ranks(shard.ctx, top))
    if shard is not None:
        scan_args = {**scan_args, "lo": shard.lo, "hi": shard.hi}
    top = combine(scan_catalog(chunk, n_users, **scan_args))
    fix = needs_exact(top)
    flags = torch.stack([top.nan.any().long(), fix.sum()])
    return PendingTop(top, fix, flags, _rescan(chunk, n_users, combine, scan_args))


def _rescan(chunk: ChunkScores, n_users: int, combine: Callable[[CatalogTop], CatalogTop],
            scan_args: dict) -> Callable[[torch.Tensor], CatalogTop]:
    """``PendingTop.rescan``: the exact state of some rows, their chunks scored as before."""
    return lambda rows: combine(scan_catalog(chunk, n_users, rows=rows, **scan_args))


def finish_top(pending: PendingTop) -> CatalogTop:
    """The batch's state with NaN refused (ValueError) and ties fixed to the tie rule: one host
    sync for both checks; the rows ``needs_exact`` names (rare) are scanned again with a stable
    sort. Across ranks every rank holds the same merged state, so all take the same branches
    (a NaN raises on every rank) and the fix-up's rescans merge the same way.

    The flags carry the number of rows to fix, so the fix-up finds them with ``nonzero_static``
    (a known size), not ``nonzero``: the latter waits for the whole queue, i.e. the next batch,
    and then the device idled while the host issued the rescan and the next batch (call U,
    2026-12-03: 0.17 s of a 1.10-s beauty-like split for 12 rows)."""
    if pending.ready is not None:  # ``send_flags``: wait for this batch, not for the next
        pending.ready.synchronize()
        has_nan, n_fix = pending.host_flags.tolist()
    else:
        has_nan, n_fix = pending.flags.tolist()
    if has_nan:
        raise ValueError("scores contain NaN: the model diverged or the inputs are broken")
    if not n_fix:
        return pending.top
    rows = torch.nonzero_static(pending.fix, size=n_fix).squeeze(1)
    return pending.top.put(rows, pending.rescan(rows))


def catalog_top(chunk: ChunkScores, n_users: int, *, shard: CatalogShard | None = None,
                **scan_args) -> CatalogTop:
    """``scan_catalog`` over the whole catalog, NaN refused, ties fixed to the tie rule:
    ``finish_top(start_top(...))``, one host sync. Raises ValueError on a NaN score."""
    return finish_top(start_top(chunk, n_users, shard=shard, **scan_args))


# ``EVAL_GRAPHS=0`` in the environment (read at import) turns ``BatchGraphs`` off.
GRAPHS = os.environ.get("EVAL_GRAPHS", "1") != "0"
_MIN_PAIRS = 1024  # the smallest history bucket of a graphed batch


def pairs_bucket(n: int) -> int:
    """A graphed batch's history pairs: ``n`` rounded up to a power of two (at least 1,024)."""
    return max(_MIN_PAIRS, 1 << max(n - 1, 0).bit_length())


def cuda_graph(pool) -> Callable:
    """``capture(body) -> (replay, outputs)``: ``body()`` captured as a CUDA graph in ``pool``."""
    def capture(body):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = body()
        return graph.replay, out
    return capture


class BatchGraphs:
    """``start_top`` of a model's full evaluation batches replayed as CUDA graphs (one process).

    Why: a batch's scan is ~200 small launches (the user vectors; per chunk the matmul, the
    history masking, the top-k; the merges); issuing them took ~10 ms of host time a batch for
    ~6 ms of GPU work (beauty-like, one H200, call G), so the split was host-bound. Measured on
    one H200 (2026-12-02, experiments/bench/NOTES_speed.md): a beauty-like test split 2.58 s eager
    (call L) and 1.31 s graphed (call O, the second split of a process; the first pays cuDNN and
    cuBLAS plans for the new shapes), of which ~1.14 s is the replays' GPU time (call N).
    How: ``eval_batches(pow2_width=True)`` gives a split's batches a few input widths, and the
    history pairs are padded to ``pairs_bucket`` with (row r % B, item 0) pairs, which mask
    nothing (item 0 is column -1, outside every chunk: ``_mask_chunk`` adds 0 there). The first
    batch of each (width, pairs) shape runs eagerly (the warm-up) and the shape's graph is
    captured right after (``capture``: ``cuda_graph`` with one memory pool for all shapes; the
    CPU tests pass a stand-in that reruns the body); later batches of that shape copy their
    inputs into the graph's static tensors and replay it. A replay's outputs are cloned:
    ``rank_split`` finishes a batch only after queuing the next, whose replay (of the same or
    another graph of the pool) would overwrite them; the clones are a few (B, k) tensors and the
    (B, D) user vectors that a tie fix-up scores again. The last, smaller batch runs eagerly.
    The graphs live for one split: kept across splits they would hold the scan's pool (~2 GiB at
    chunk 65,536) between evaluations, for ~0.15 s a split (call P).
    Same kernels on the same shapes as the eager scan: the same state bit for bit (GPU test).
    If a capture fails, the split goes on eagerly with a warning.
    """

    def __init__(self, score_fn: Callable[[torch.Tensor], ChunkScores], n_users: int, *, scan_args: dict,
                 capture: Callable | None = None):
        self.score_fn, self.n_users, self.scan_args = score_fn, n_users, scan_args
        self.capture = capture or cuda_graph(torch.cuda.graph_pool_handle())
        self.graphs: dict[tuple[int, int], tuple] = {}
        self.failed = False

    def start(self, batch, seen: tuple[torch.Tensor, torch.Tensor] | None) -> PendingTop:
        """The batch's ``PendingTop``: replayed when its shape has a graph, else eager."""
        B = len(batch.users)
        key = (batch.inputs.shape[1], 0 if seen is None else pairs_bucket(len(seen[0])))
        full = B == self.n_users and not self.failed
        if not full or key not in self.graphs:
            pending = start_top(self.score_fn(batch.inputs), B, targets=batch.targets, seen=seen, **self.scan_args)
            if full:  # this batch was the shape's warm-up: capture its graph for the next ones
                self._capture(key, batch, seen is not None)
            return pending
        static, replay, out = self.graphs[key]
        _copy_in(static, batch, seen)
        replay()
        users, *top, fix, flags = _fresh(out)
        chunk = ModelChunks(users, static[5].catalog, static[5].offset)
        args = dict(self.scan_args, targets=batch.targets, seen=seen)
        return PendingTop(CatalogTop(*top), fix, flags, _rescan(chunk, B, lambda t: t, args))

    def _capture(self, key: tuple[int, int], batch, masked: bool) -> None:
        """Static inputs for ``key``'s shape, and its graph: (inputs, targets, pair rows, pair
        items, the padding rows, the captured chunk (its catalog and offset))."""
        B = batch.inputs.shape[0]
        device = batch.inputs.device
        pad = torch.arange(key[1], device=device) % B
        static = [torch.zeros_like(batch.inputs), torch.zeros_like(batch.targets), pad.clone(),
                  torch.zeros(key[1], dtype=torch.int64, device=device), pad, None]

        def body() -> list[torch.Tensor]:
            own = static[5] = self.score_fn(static[0])
            seen = (static[2], static[3]) if masked else None
            p = start_top(own, B, targets=static[1], seen=seen, **self.scan_args)
            return [own.users, *p.top, p.fix, p.flags]

        try:
            replay, out = self.capture(body)
        except RuntimeError as err:  # e.g. a model whose forward syncs with the host
            warnings.warn(f"evaluation: CUDA graphs off for this split ({str(err).splitlines()[0]})")
            self.failed = True
            return
        self.graphs[key] = (static, replay, out)


def _copy_in(static: list, batch, seen: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """A batch into a graph's static inputs: the pairs padded with (row r % B, item 0)."""
    static[0].copy_(batch.inputs)
    static[1].copy_(batch.targets)
    if seen is not None:
        n = len(seen[0])
        static[2].copy_(static[4])  # the padding rows, then this batch's own pairs in front
        static[3].zero_()
        static[2][:n].copy_(seen[0])
        static[3][:n].copy_(seen[1])


def _fresh(out: list[torch.Tensor]) -> list[torch.Tensor]:
    """A replay's outputs, cloned: the next replay overwrites them."""
    return [t.clone() for t in out]


@torch.no_grad()
def rank_split(
    score_fn: Callable[[torch.Tensor], ChunkScores],
    seqs: DeviceSequences,
    *,
    split: str,
    batch_size: int,
    max_len: int,
    mask_history: bool,
    ks: Sequence[int],
    item_user_counts: np.ndarray,
    n_train_users: int,
    users: torch.Tensor | None = None,
    reduce: Callable[[RankingMetrics], None] | None = None,
    path: str = DEFAULT_PATH,
    chunk_size: int = DEFAULT_CHUNK,
    group_size: int = DEFAULT_GROUP,
    shard: CatalogShard | None = None,
    capture: Callable | None = None,
) -> dict[str, float]:
    """Ranks the whole catalog for every user of ``split`` ("valid" or "test").

    ``score_fn(inputs (B, L))`` returns ``chunk(lo, hi) -> (B, hi - lo)`` fp32 scores of
    catalog columns [lo, hi) (a fresh tensor: it is masked in place). ``path``: "streaming"
    (chunks of ``chunk_size`` items, module docstring) or "dense" (one (B, n_items) chunk
    through ``RankingMetrics.update``, the previous evaluation); same metrics.
    ``item_user_counts`` (``SequenceData.train_item_user_counts()``) and ``n_train_users``
    (``count_train_users``) feed Surprisal; callers compute them once per run, not per call.
    ``users`` (default: all) and ``reduce`` (called on the metrics before ``compute``) let
    each rank of a distributed run rank its share of the users and combine the results
    exactly (``eval_shard``, ``reduce_metrics``).
    ``shard`` (catalog-parallel, ``CatalogShard``): ``score_fn``'s chunks score only this
    rank's columns; every rank ranks every user of the split in the same batches (no
    ``users``/``reduce``) and the states are merged across ranks per batch (``catalog_top``),
    so every rank returns the one-process metrics. Streaming path only.
    One CUDA process on the streaming path with a model's ``score_fn`` (``model_scores``):
    full batches replay CUDA graphs (``BatchGraphs``; ``EVAL_GRAPHS=0`` turns them off).
    ``capture`` (tests): graphs on any device, made by this stand-in for ``cuda_graph``.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if shard is not None and (path != "streaming" or users is not None or reduce is not None):
        raise ValueError("a catalog shard is ranked on the streaming path, every rank all users "
                         f"(got path={path!r}, users and reduce {'set' if users is not None or reduce else 'unset'})")
    metrics = RankingMetrics(
        n_items=seqs.n_items, ks=ks, item_user_counts=item_user_counts, n_train_users=n_train_users
    )
    scan_args = dict(n_items=seqs.n_items, k=max(metrics.ks), device=seqs.device, chunk_size=chunk_size,
                     group_size=group_size)
    graphs = None
    if capture is not None or (GRAPHS and seqs.device.type == "cuda" and getattr(score_fn, "graphable", False)
                               and path == "streaming" and shard is None and users is None and reduce is None):
        graphs = BatchGraphs(score_fn, batch_size, scan_args=scan_args, capture=capture)
    pending = None  # the previous batch's state, finished once the next batch is queued
    for batch in eval_batches(seqs, split=split, batch_size=batch_size, max_len=max_len, users=users,
                              pow2_width=graphs is not None):
        seen = history(seqs, batch.users, split=split, size=batch.n_seen) if mask_history else None
        if path == "dense":
            metrics.update(score_fn(batch.inputs)(0, seqs.n_items), batch.targets, history=seen)
            continue
        if graphs is not None:
            queued = graphs.start(batch, seen)
        else:
            queued = start_top(score_fn(batch.inputs), len(batch.users), targets=batch.targets, seen=seen,
                               shard=shard, **scan_args)
        send_flags(queued)
        if pending is not None:
            metrics.update_top(finish_top(pending))
        pending = queued
    if pending is not None:
        metrics.update_top(finish_top(pending))
    if reduce is not None:
        reduce(metrics)
    return metrics.compute()


def model_scores(model: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], *,
                 amp: bool, offset: int = 0) -> Callable[[torch.Tensor], ChunkScores]:
    """``score_fn`` of ``rank_split`` for a model: the user vectors once per batch, then fp32
    ``u @ catalog[lo:hi].T`` per chunk (evaluation and ``core.recommend`` both score so).
    ``offset``: ``model.catalog()`` holds the columns from ``offset`` on (a rank's shard);
    chunks are asked in global columns."""
    catalog = model.catalog().float().contiguous()  # (n_items, D) or the shard's (V_r, D), once per split

    def score_fn(inputs: torch.Tensor) -> ChunkScores:
        with autocast(inputs.device, amp):
            last = forward(inputs, last=True)  # (B, D): left padding puts the newest item last
        return ModelChunks(last.float().contiguous(), catalog, offset)

    score_fn.graphable = True  # ``BatchGraphs`` may capture it (its chunks are ``ModelChunks``)
    return score_fn


# ``EVAL_FUSED=1`` in the environment (read at import): the streaming path scores a model's
# batches with the fused kernels (core/eval_kernels.py) where they run (CUDA, or the Triton
# interpreter) for a whole catalog (not a rank's shard). Off by default: on one H200 (2026-12-02,
# experiments/bench/NOTES_speed.md, call J) a beauty-like test split took 2.84 s fused against
# 2.68 s on the matmul path (chunk 65,536), at 0.25 GiB against 2.12 GiB: the fused group max
# runs its FMA at 22 TFLOP/s where cuBLAS's fp32 GEMM runs at ~26-39. For memory, not speed.
FUSED = os.environ.get("EVAL_FUSED") == "1"
# ``EVAL_PREFILTER=0`` (read at import) turns the prefilter off; on by default since call W for
# catalogs of at least ``PREFILTER_MIN_ITEMS`` (``uses_prefilter``). One H200, 2026-12-03, all
# metrics identical on both paths: a beauty-like test split (207,649 items) took 0.742 s against
# the matmul path's 1.259 s at batch 8,192 (call W) and 0.619 against 1.191 s at 16,384 (call X),
# in 1.35 against 8.21 GiB; but ml20m-like (20,729 items) 1.429 against 0.192 s, and trained
# Beauty 5-core and ML-100K models 0.098 / 0.015 s against 0.070 / 0.011 (call X); at batch
# 4,096 synthetic catalogs of 65,536 and 131,072 items 0.319 / 0.457 s against 0.308 / 0.430 (in
# 0.26 / 0.34 against 1.16 / 2.13 GiB; call Y), beauty-like's 207,649 1.011 s (call X) against
# 1.31 (call O, an earlier commit). So the cut, 150,000 items, lies between the last catalog where the
# matmul path was faster and the first where the prefilter was. The same fused family as ``FUSED``, but
# each batch's group maxima are first taken on TF32 tensor cores
# (``eval_kernels.prefilter_chunk_top``, ``group_max`` at precision "tf32", no scores stored):
# with a rigorous error margin they pick ``PREFILTER_CANDIDATES`` groups (None: 2 (k + 1)) per
# user, and only their columns are scored exactly (the fused path's FMA chain, ``score_groups``).
# Up to ``PREFILTER_RESCUE`` rows a batch whose candidates the margin cannot certify are redone
# exactly inside the batch (no host sync); any beyond go to ``finish_top``'s fix-up (call V: 16
# candidates left so many rows to it that a split took 7.6 s; 22 is the default). Where it
# does not apply (the CPU, a rank's catalog shard), the matmul path runs.
PREFILTER = os.environ.get("EVAL_PREFILTER", "1") != "0"
# ``EVAL_PREFILTER_MIN_ITEMS`` (read at import): the smallest catalog the prefilter takes.
PREFILTER_MIN_ITEMS = int(os.environ.get("EVAL_PREFILTER_MIN_ITEMS", "150000"))
# ``EVAL_PREFILTER_CANDIDATES`` (read at import): candidate groups a user (default 2 (k + 1)).
PREFILTER_CANDIDATES: int | None = int(os.environ["EVAL_PREFILTER_CANDIDATES"]) if os.environ.get(
    "EVAL_PREFILTER_CANDIDATES") else None
# ``EVAL_PREFILTER_RESCUE`` (read at import): rows a batch redone in place (default 128: one user
# block of ``group_max``'s default tiles).
PREFILTER_RESCUE = int(os.environ.get("EVAL_PREFILTER_RESCUE", "128"))


def uses_prefilter(n_items: int) -> bool:
    """Whether a model's evaluation over a whole catalog of ``n_items`` takes the prefilter where
    the kernels run (CUDA): ``PREFILTER`` and at least ``PREFILTER_MIN_ITEMS`` items."""
    return PREFILTER and n_items >= PREFILTER_MIN_ITEMS


class ModelChunks:
    """A model's ``ChunkScores`` for one batch: ``(lo, hi) -> users @ catalog[lo:hi].T`` fp32,
    columns counted from ``offset`` (a rank's shard). ``fused``: ``scan_catalog`` takes the fused
    kernels instead (``_scan_fused``), which score by their own fp32 arithmetic (one FMA chain per
    score) where the matmul rounds its own way: the two paths agree to fp32 rounding, each
    consistent within itself (a target and the items it is ranked against are scored alike)."""

    def __init__(self, users: torch.Tensor, catalog: torch.Tensor, offset: int = 0):
        self.users, self.catalog, self.offset = users, catalog, offset
        kernels = offset == 0 and (users.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")
        self.prefilter = kernels and uses_prefilter(catalog.shape[0])
        self.fused = kernels and (FUSED or self.prefilter)

    def __call__(self, lo: int, hi: int) -> torch.Tensor:
        return self.users @ self.catalog[lo - self.offset:hi - self.offset].T  # (B, hi - lo)


def evaluate_model(
    model: torch.nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    seqs: DeviceSequences,
    *,
    amp: bool,
    **rank_args,
) -> dict[str, float]:
    """Metrics of ``model``; ``forward`` is the model or its compiled version.

    ``rank_args`` are ``rank_split``'s keyword arguments (split, batch_size, ...).
    A catalog-parallel model (its ``item_emb`` a ``ShardedItemEmbedding``, under torchrun) is
    evaluated as a distributed top-k (``sharded_scoring``): every rank ranks every user of
    the split against its own catalog shard and the states are merged, so every rank returns
    the one-process metrics; a data-parallel split of the users (``users``, ``reduce``) is not
    needed there and is ignored. Every rank must call it together.
    """
    was_training = model.training
    model.eval()
    try:
        with sharded_scoring(model) as shard:
            offset = 0
            if shard is not None:
                rank_args = {**rank_args, "shard": shard, "users": None, "reduce": None}
                offset = shard.lo
            return rank_split(model_scores(model, forward, amp=amp, offset=offset), seqs, **rank_args)
    finally:
        model.train(was_training)


def popularity_scores_fn(item_user_counts: np.ndarray) -> Callable[[torch.Tensor], ChunkScores]:
    """``score_fn`` of ``rank_split`` for the most-popular baseline: every user gets the items'
    ``popularity_scores`` (distinct training users per item)."""
    popular = popularity_scores(item_user_counts)  # (n_items,) on the CPU

    def score(inputs: torch.Tensor) -> ChunkScores:
        nonlocal popular
        popular = popular.to(inputs.device)  # once: a no-op after the first batch
        # A fresh (B, hi - lo) copy: the chunk is masked in place.
        return lambda lo, hi: popular[lo:hi].expand(inputs.shape[0], -1).clone()

    return score


def evaluate_popularity(seqs: DeviceSequences, **rank_args) -> dict[str, float]:
    """Most-popular baseline (distinct training users per item), ranked like the model."""
    return rank_split(popularity_scores_fn(rank_args["item_user_counts"]), seqs, **rank_args)


def evaluate(run, data: SequenceData | None = None, *, split: str = "test", ks: Sequence[int] = (10,),
             mask_history: bool = True, batch_size: int | None = None) -> dict[str, float]:
    """Full-catalog metrics of a trained model on ``split`` ("valid" or "test"): the public API.

    ``run`` is ``core.load_run(...)``'s result, or a model with ``data`` its SequenceData.
    Same protocol as training's evaluation (history masked by default, fp32 scores, bf16
    autocast on CUDA), so a run's best model gives back its metrics.json's numbers.
    """
    model, data = (run.model, run.data) if data is None else (run, data)
    device = next(model.parameters()).device
    seqs = DeviceSequences.from_data(data, device)
    return evaluate_model(
        model, model, seqs, amp=device.type == "cuda", split=split, max_len=model.max_len,
        batch_size=batch_size or default_eval_batch_size(data.n_items), mask_history=mask_history,
        ks=ks, item_user_counts=data.train_item_user_counts(), n_train_users=count_train_users(data))


# --- across ranks -----------------------------------------------------------------------------
# Rank r ranks the global evaluation batches r, r + K, r + 2K, ...; the per-batch float64 sums
# are gathered and summed in the global batch order, and the Coverage masks are OR-ed, so the
# metrics equal a 1-rank evaluation bit for bit (same batches, same additions in the same order).


def eval_shard(n_users: int, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """Positions (in the evaluation order, ``eval_order``) of the users rank ``rank`` evaluates:
    the global batches rank, rank + K, ... concatenated.

    ``eval_batches`` over these users with the same ``batch_size`` yields exactly those global
    batches (every batch but the globally last is full, and that one is this rank's last), so
    each batch's sums are those of a 1-rank evaluation. (n,) int64.
    """
    starts = range(rank * batch_size, n_users, world * batch_size)
    parts = [torch.arange(lo, min(lo + batch_size, n_users)) for lo in starts]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def reduce_metrics(ctx: DistContext, metrics: RankingMetrics) -> None:
    """Replaces each rank's ``metrics`` (filled over ``eval_shard``'s users) by the global ones.

    Per-batch sums are gathered and put back in global batch order (batch g was ranked by rank
    g % K as its (g // K)-th), then summed one after another as one process would; the
    Coverage masks are OR-ed. The result equals a 1-rank evaluation bit for bit.
    """
    if not ctx.enabled:
        return
    rows, seen = metrics.state()  # (n_local, C) float64, (len(ks), n_items) bool
    counts = [int(n) for n in all_reduce(
        ctx, torch.zeros(ctx.world, dtype=torch.int64).index_fill_(0, torch.tensor(ctx.rank), len(rows)))]
    gathered = all_gather_rows(ctx, rows, counts)
    ordered = [gathered[g % ctx.world][g // ctx.world] for g in range(sum(counts))]
    union = all_reduce(ctx, seen.to(torch.uint8), op=dist.ReduceOp.MAX).bool()
    metrics.load_state(torch.stack(ordered) if ordered else rows[:0], union)


def eval_args(ctx: DistContext, seqs: DeviceSequences, batch_size: int) -> dict:
    """Extra ``rank_split`` arguments for this rank: its users (its global batches of
    ``eval_order``, what one process ranks) and the exact reduction ({} on 1 rank)."""
    if not ctx.enabled:
        return {}
    return {"users": eval_order(seqs)[eval_shard(seqs.n_users, batch_size, ctx.rank, ctx.world).numpy()],
            "reduce": lambda metrics: reduce_metrics(ctx, metrics)}



# --- catalog-parallel models: each rank scores its shard ----------------------------------------


class SameIdsLookup(torch.nn.Module):
    """A sharded item table's lookup while every rank looks up the SAME ids (evaluation ranks the
    same users on every rank): each rank fills the rows it owns, zeros elsewhere, and one
    all-reduce of (*ids, D) sums them (x + 0 is exact: the one-process embeddings bit for bit).
    ``weight`` is the table's own (V_r + 1, D) parameter, so ``catalog()`` is the shard.
    O(ids x D) per rank, where the training lookup gathers every rank's ids (K x as many)."""

    def __init__(self, table):
        super().__init__()
        self.table = [table]  # not a submodule: the model's state is not changed by the swap
        self.weight = table.weight
        self.ctx, self.lo, self.hi, self.n_items = table.ctx, table.lo, table.hi, table.n_items

    def forward(self, ids: torch.Tensor, shares=None) -> torch.Tensor:
        if shares is not None:
            raise ValueError("SameIdsLookup: every rank looks up the same ids (no shares)")
        col = ids - 1  # padding (id 0) -> -1: owned by nobody, zeros as the padding row
        mine = (col >= self.lo) & (col < self.hi)
        rows = self.weight[1:][torch.where(mine, col - self.lo, 0)]
        return all_reduce(self.ctx, torch.where(mine[..., None], rows, 0.0))


@contextlib.contextmanager
def sharded_scoring(model: torch.nn.Module):
    """Yields the ``CatalogShard`` of a catalog-parallel ``model`` (its ``item_emb`` a
    ``ShardedItemEmbedding``, or already swapped), with the table's lookup swapped for
    ``SameIdsLookup`` while the block lasts; None (and nothing changed) for a model holding its
    whole table. ``evaluate_model`` enters it itself; every rank must run the block together."""
    from core.parallel.catalog import ShardedItemEmbedding

    table = getattr(model, "item_emb", None)
    if isinstance(table, SameIdsLookup):  # swapped by an enclosing block
        yield CatalogShard(table.ctx, table.lo, table.hi)
        return
    if not isinstance(table, ShardedItemEmbedding):
        yield None
        return
    model.item_emb = SameIdsLookup(table)
    try:
        yield CatalogShard(table.ctx, table.lo, table.hi)
    finally:
        model.item_emb = table
