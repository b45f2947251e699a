"""Catalog-parallel softmax cross-entropy and the sharded item table: the catalog split by item range.

Why: at tens of millions of items the table, its Adam state and the loss's pass over the
catalog no longer fit or pay on one device. Here rank r of K holds only the items of
``item_range(V, r, K)`` (V / K rows, its Adam state with them), and

- ``catalog_parallel_ce(e, c_shard, targets, ctx=...)``: every rank gathers all ranks' hidden
  states E (N, D) and targets, computes the log-sum-exp of E against ITS shard and the target
  logits that fall in its shard, and one all-gather of those (N,) pairs lets every rank finish
  lse = logsumexp over the shards (max-subtracted) and the global mean loss. Backward
  recomputes the shard's softmax with the global lse: dC stays on its owner, and the partial
  dE of every shard is summed and sent to the rank whose rows they are (reduce-scatter on
  NCCL, all-reduce and slice on gloo).
- ``sharded_lookup(ids, table_shard, ctx=...)``: the input embedding of a catalog-parallel
  model. Ids are gathered, every rank fills the rows it owns, and the sums go back to the rank
  that asked; backward gathers the output gradients and each owner adds them to its rows.
- ``ShardedItemEmbedding``: the model's item table (input embedding and output head) holding
  only this rank's rows, looked up with ``sharded_lookup``; checkpoints save each rank's rows (DCP).

Every rank's row count (``counts``) comes from the caller when it is known on the host: the
training step passes its batch's ``core.parallel.shares.RankShares`` as an argument, so no
size is exchanged and nothing is remembered between calls.

Scaling under DDP: the replicated model body is averaged over ranks by DDP, so the gradient a
rank sends into it must be K times its share. ``e_grad_scale = K`` does that for dE;
``table_grad_scale = 1 / K`` undoes it for the lookups' gradients, which arrive scaled by K
and are summed on the owner. With both at 1 the functions give the plain gradients of the
global mean loss (what the tests compare against 1-rank CE).

The shard's log-sum-exp is the project's split kernel (``core.losses.kernels.cce_split.split_lse``)
on CUDA with bf16/fp16 hidden states, else plain torch in row chunks; the backward is plain
torch in fp32, in chunks of the shard's items (CE's math on the shard, (N, chunk) logits at a
time, at most ``_CHUNK_ELEMENTS`` of them). It is not cut-cross-entropy's backward kernel on
purpose: that kernel accumulates dE and dC in bf16 (``zeros_like(e)``) over every tile of the
catalog, which at V ~ 2e5 costs dE ~1-12% relative error (experiments/bench/NOTES_speed.md,
"GPU check of 2026-11-29"); here dE is within ~0.2% (its bf16 rounding), dC ~1e-7.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.distributed as dist

# The one loss module this layer uses: the constant every loss skips. (The split-LSE kernel,
# core.losses.kernels.cce_split, loads on first use on CUDA; tests/test_layers.py allows both.)
from core.losses.registry import IGNORE_INDEX
from core.parallel.collectives import DistContext, _to_comm, all_gather_rows, collective_errors
from core.parallel.shares import RankShares

# fp32 logits per chunk (128 MiB): the bound on the loss's largest transient, whatever N and V_k
_CHUNK_ELEMENTS = 2**25


def item_ranges(n_items: int, world: int) -> list[tuple[int, int]]:
    """[lo, hi) catalog columns (item id - 1) of every rank: DTensor's ``Shard(0)`` rule.

    Rank r owns ``ceil(V / K)`` items from ``r * ceil(V / K)`` on (the last rank fewer), as
    ``torch.chunk`` and DTensor split a dimension, so a rank's rows are its local part of a
    ``Shard(0)`` DTensor of the whole table: sharded checkpoints (``core.checkpoint``,
    ``torch.distributed.checkpoint``) save and reshard them with DCP's own planner, whose
    offsets follow this rule only (explicit uneven shards are not supported by torch 2.13's
    DTensor). A split that would leave a rank no item is refused."""
    chunk = -(-n_items // world) if world >= 1 else 0
    if world < 1 or n_items < world or chunk * (world - 1) >= n_items:
        raise ValueError(f"catalog-parallel needs at least one item per rank: {n_items} items in chunks of "
                         f"{chunk} over {world} ranks leave the last rank none")
    return [(r * chunk, min((r + 1) * chunk, n_items)) for r in range(world)]


def item_range(n_items: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) catalog columns that rank ``rank`` owns (``item_ranges``)."""
    return item_ranges(n_items, world)[rank]


def _row_counts(ctx: DistContext, n: int, counts: Sequence[int] | None) -> list[int]:
    """Every rank's row count: ``counts`` when the caller knows them (host), else exchanged."""
    if counts is not None:
        return [int(c) for c in counts]
    if not ctx.enabled:
        return [n]
    mine = torch.zeros(ctx.world, dtype=torch.int64)
    mine[ctx.rank] = n
    buf = _to_comm(ctx, mine)
    with collective_errors(ctx, "all_reduce of row counts"):
        dist.all_reduce(buf)
    return [int(c) for c in buf.cpu()]


def _chunks(n: int, width: int):
    """Row slices of at most ``_CHUNK_ELEMENTS / width`` rows covering 0..n."""
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    return (slice(lo, min(lo + step, n)) for lo in range(0, n, step))


def _item_chunks(n_items: int, n_rows: int):
    """Item (column) slices of at most ``_CHUNK_ELEMENTS / n_rows`` items covering 0..n_items.

    The backward chunks over items, not rows: row chunks re-read (and re-cast) the whole shard
    once per chunk, i.e. N * V_k / _CHUNK_ELEMENTS times per step (317 passes over items-10m's
    5M-item shard at N = 4,109 with 2**26-element chunks); item chunks read it once.
    """
    step = max(1, _CHUNK_ELEMENTS // max(n_rows, 1))
    return (slice(lo, min(lo + step, n_items)) for lo in range(0, n_items, step))


def _logits(e: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """fp32 logits as the split LSE kernel computes them: the operands rounded to e's dtype,
    products summed in fp32 (autocast off: under it the matmul would round the logits to bf16)."""
    with torch.autocast(e.device.type, enabled=False):
        return e.float() @ c.to(e.dtype).float().T


def shard_lse(e: torch.Tensor, c_shard: torch.Tensor) -> torch.Tensor:
    """(N,) fp32 log-sum-exp of ``e`` (N, D) against this rank's items ``c_shard`` (V_k, D)."""
    if e.is_cuda and e.dtype in (torch.bfloat16, torch.float16):
        from core.losses.kernels.cce_split import split_lse

        return split_lse(e, c_shard)[0]
    out = torch.empty(e.shape[0], dtype=torch.float32, device=e.device)
    for rows in _chunks(e.shape[0], c_shard.shape[0]):
        out[rows] = torch.logsumexp(_logits(e[rows], c_shard), dim=1)
    return out


def _combine(parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 2, N) per-shard (lse, target logit) -> global (lse (N,), target logit (N,)).

    lse = M + log(sum_k exp(lse_k - M)), M the max over shards (``torch.logsumexp``): without
    the max, exp overflows for logits above ~88 in fp32. The target logit comes from the one
    shard that owns the target; the others send 0.
    """
    return torch.logsumexp(parts[:, 0], dim=0), parts[:, 1].sum(0)


def _sum_to_owner(ctx: DistContext, partial: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Sums ``partial`` (sum(counts), D) over ranks and returns this rank's rows (counts[rank], D).

    Rows [sum(counts[:r]), sum(counts[:r+1])) belong to rank r. NCCL: one reduce-scatter of the
    blocks padded to the longest; gloo (no reduce-scatter): an all-reduce, then the slice.
    """
    lo = sum(counts[: ctx.rank])
    if not ctx.enabled:
        return partial
    if ctx.backend == "nccl":
        longest = max(counts)
        blocks = partial.new_zeros(ctx.world, longest, partial.shape[1])
        for r, part in enumerate(partial.split(list(counts))):
            blocks[r, : len(part)] = part
        out = partial.new_empty(longest, partial.shape[1])
        with collective_errors(ctx, "reduce_scatter"):
            dist.reduce_scatter_tensor(out, blocks.flatten(0, 1))
        return out[: counts[ctx.rank]]
    buf = _to_comm(ctx, partial).contiguous()
    with collective_errors(ctx, "all_reduce"):
        dist.all_reduce(buf)
    return buf[lo : lo + counts[ctx.rank]].to(partial.device)


class _CatalogParallelCE(torch.autograd.Function):
    """Global mean NLL over the rows of all ranks; see the module docstring."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, e, c_shard, targets, dctx, counts, e_grad_scale):
        lo, hi = dctx.shard
        all_e = torch.cat(all_gather_rows(dctx.ctx, e, counts))  # (N, D)
        all_t = torch.cat(all_gather_rows(dctx.ctx, targets, counts))  # (N,)
        valid = all_t != IGNORE_INDEX
        mine = valid & (all_t >= lo) & (all_t < hi)  # targets this rank's shard holds
        local = torch.where(mine, all_t - lo, 0)  # (N,) shard column (0 where not mine)
        # (N,) fp32: operands rounded to e's dtype, products summed in fp32 (as the split CCE does)
        dot = (all_e.float() * c_shard.index_select(0, local).to(all_e.dtype).float()).sum(-1)
        target_logit = torch.where(mine, dot, 0.0)
        part = torch.stack([shard_lse(all_e, c_shard), target_logit])  # (2, N)
        parts = torch.stack(all_gather_rows(dctx.ctx, part.T.contiguous(), [part.shape[1]] * dctx.ctx.world))
        lse, t_logit = _combine(parts.transpose(1, 2))  # (N,), (N,)
        weight = valid.float() / valid.sum().clamp(min=1)  # (N,): the global mean, no host sync
        ctx.save_for_backward(all_e, c_shard, lse, local, mine, weight)
        ctx.dctx, ctx.counts, ctx.e_grad_scale = dctx, counts, e_grad_scale
        return ((lse - t_logit) * weight).sum()

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        """dE, dC of this shard in fp32, chunked over the shard's items (``_item_chunks``).

        Autocast is off here: the logits are the fp32 products of the operands rounded to e's
        dtype, as the forward's split LSE kernel computes them (bf16 logits would not match
        its lse), and dE, dC are accumulated in fp32. Item chunks read each shard row once
        per call; one (N, chunk) fp32 buffer, updated in place, is the only large transient.
        """
        all_e, c_shard, lse, local, mine, weight = ctx.saved_tensors
        scale = grad * weight  # (N,)
        with torch.autocast(all_e.device.type, enabled=False):
            e32 = all_e.float()  # (N, D)
            de_all = torch.zeros(all_e.shape, dtype=torch.float32, device=all_e.device)  # (N, D)
            dc = torch.empty(c_shard.shape, dtype=torch.float32, device=c_shard.device)  # (V_k, D)
            for cols in _item_chunks(c_shard.shape[0], all_e.shape[0]):
                c = c_shard[cols].to(all_e.dtype).float()  # (w, D): rounded as the forward's
                g = _logits(e32, c)  # (N, w) fp32
                # d loss / d logits = (softmax - one_hot) * weight, this chunk's columns only
                g.sub_(lse[:, None]).exp_()
                hit = mine & (local >= cols.start) & (local < cols.stop)  # targets in this chunk
                g.scatter_add_(1, (local - cols.start).clamp(0, g.shape[1] - 1)[:, None], -hit[:, None].float())
                g.mul_(scale[:, None])
                de_all.addmm_(g, c)
                dc[cols] = g.T @ e32
        de = _sum_to_owner(ctx.dctx.ctx, de_all, ctx.counts) * ctx.e_grad_scale
        return de.to(all_e.dtype), dc.to(c_shard.dtype), None, None, None, None


class _Shard:
    """What the autograd functions need besides tensors: the context and this rank's item range."""

    def __init__(self, ctx: DistContext, n_items: int):
        self.ctx = ctx
        self.shard = item_range(n_items, ctx.rank, ctx.world)


def catalog_parallel_ce(e: torch.Tensor, c_shard: torch.Tensor, targets: torch.Tensor, *,
                        ctx: DistContext, n_items: int, counts: Sequence[int] | None = None,
                        e_grad_scale: float = 1.0) -> torch.Tensor:
    """Softmax cross-entropy over the whole catalog with the table split over ranks.

    ``e`` (N_r, D) this rank's hidden states, ``c_shard`` (V_r, D) this rank's items
    (``item_range(n_items, rank, world)``), ``targets`` (N_r,) GLOBAL catalog columns
    (item id - 1) or ``IGNORE_INDEX``. Returns the mean NLL over every rank's non-ignored
    targets, the same value on every rank. ``counts``: every rank's N_r when known on the host
    (saves one small exchange). ``e_grad_scale``: see the module docstring (K under DDP).
    """
    lo, hi = item_range(n_items, ctx.rank, ctx.world)
    if c_shard.shape[0] != hi - lo:
        raise ValueError(f"rank {ctx.rank} owns items [{lo}, {hi}) but got a shard of {c_shard.shape[0]} rows")
    counts = _row_counts(ctx, e.shape[0], counts)
    if torch.is_autocast_enabled(e.device.type):  # bf16 under autocast: half the all-gather, the split LSE kernel
        e = e.to(torch.get_autocast_dtype(e.device.type))
    return _CatalogParallelCE.apply(e, c_shard, targets, _Shard(ctx, n_items), counts, e_grad_scale)


class _ShardedLookup(torch.autograd.Function):
    """Rows of a table split over ranks, for ids held by every rank; see ``sharded_lookup``."""

    @staticmethod
    def forward(ctx, ids, table_shard, dctx, counts, table_grad_scale):
        lo, hi = dctx.shard
        all_ids = torch.cat(all_gather_rows(dctx.ctx, ids, counts))  # (M,)
        col = all_ids - 1  # catalog column; padding (id 0) -> -1, owned by nobody
        mine = (col >= lo) & (col < hi)
        rows = torch.where(mine, col - lo, 0)
        partial = table_shard.index_select(0, rows) * mine[:, None]  # (M, D): zero where not mine
        ctx.save_for_backward(rows, mine)
        ctx.dctx, ctx.counts, ctx.table_grad_scale = dctx, counts, table_grad_scale
        ctx.table_shape = table_shard.shape
        return _sum_to_owner(dctx.ctx, partial, counts)

    @staticmethod
    def backward(ctx, grad):
        rows, mine = ctx.saved_tensors
        all_grad = torch.cat(all_gather_rows(ctx.dctx.ctx, grad.contiguous(), ctx.counts))  # (M, D)
        d_table = grad.new_zeros(ctx.table_shape)  # (V_r, D): the one table-sized transient
        # others' ids add zeros: no sync; the scale on the (M, D) rows, not on a second table copy
        d_table.index_add_(0, rows, all_grad * (mine[:, None] * ctx.table_grad_scale).to(all_grad.dtype))
        return None, d_table, None, None, None


def sharded_lookup(ids: torch.Tensor, table_shard: torch.Tensor, *, ctx: DistContext, n_items: int,
                   counts: Sequence[int] | None = None, table_grad_scale: float = 1.0) -> torch.Tensor:
    """Item embeddings of ``ids`` (any shape, item ids 1..n_items, 0 = padding -> zeros).

    The embedding rows live on their owners (``item_range``): ``table_shard`` (V_r, D) is this
    rank's. Returns (*ids.shape, D). ``counts``: every rank's ``ids.numel()`` when known.
    ``table_grad_scale``: 1 / K under DDP (see the module docstring).
    """
    flat = ids.reshape(-1)
    counts = _row_counts(ctx, flat.numel(), counts)
    out = _ShardedLookup.apply(flat, table_shard, _Shard(ctx, n_items), counts, table_grad_scale)
    return out.view(*ids.shape, table_shard.shape[1])


# --- the model's item table, sharded ------------------------------------------------------------


class ShardedItemEmbedding(torch.nn.Module):
    """SASRec's item table (input embedding and output head) holding only this rank's items.

    ``weight`` is (V_r + 1, D): an unused zero row 0 (SASRec's padding row), then the rows of
    ``item_range(n_items, rank, K)``, so ``SASRec.catalog()`` (``item_emb.weight[1:]``) is this
    rank's shard and Adam keeps V / K rows of state. Lookups go through ``sharded_lookup``.

    ``state_dict`` gathers the shards into the (V + 1, D) weight of a 1-rank model and
    ``load_state_dict`` takes this rank's rows of it (a whole-table view, for comparisons);
    run checkpoints do not use it: they are sharded (``local_state``, ``core.checkpoint``).
    """

    def __init__(self, rows: torch.Tensor, *, ctx: DistContext, n_items: int):
        """``rows`` (V_r, D): this rank's rows of the table, items ``item_range(n_items, rank, K)``
        (made by the caller, e.g. ``core.model.item_table_init``: the whole table is never made)."""
        super().__init__()
        self.ctx, self.n_items = ctx, n_items
        self.lo, self.hi = item_range(n_items, ctx.rank, ctx.world)
        if rows.shape[0] != self.hi - self.lo:
            raise ValueError(f"rank {ctx.rank} owns items [{self.lo}, {self.hi}), got {rows.shape[0]} rows")
        self.weight = torch.nn.Parameter(torch.cat([rows.new_zeros(1, rows.shape[1]), rows.detach()]))
        self.grad_scale = 1.0 / ctx.world  # DDP's convention: see the module docstring

    def forward(self, ids: torch.Tensor, shares: RankShares | None = None) -> torch.Tensor:
        """(*ids.shape, D) embeddings; every rank must call it together (it is a collective).

        ``shares``: every rank's share of the batch whose ids these are (host counts, no
        exchange); without it the ranks exchange their ids' counts first.
        """
        return sharded_lookup(ids, self.weight[1:], ctx=self.ctx, n_items=self.n_items,
                              counts=None if shares is None else shares.ids,
                              table_grad_scale=self.grad_scale)

    def full_weight(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The whole (n_items + 1, D) table (padding row zero) on every rank, on ``device``
        (default: the shard's); a collective."""
        return self.gather_state(self.weight.detach(), device)

    def _gather(self, shard: torch.Tensor, device) -> list[torch.Tensor]:
        """Every rank's ``shard`` (V_r, D), one owner at a time, each moved to ``device`` as
        it arrives: the communication device never holds more than one shard beyond its own
        (a checkpoint of a 100M-item table goes to host memory, not to every GPU)."""
        if not self.ctx.enabled:
            return [shard.to(device)]
        parts = []
        for r, (lo, hi) in enumerate(item_ranges(self.n_items, self.ctx.world)):
            if r == self.ctx.rank:
                buf = _to_comm(self.ctx, shard)
            else:
                buf = _to_comm(self.ctx, shard.new_empty(0)).new_empty(hi - lo, shard.shape[1])
            with collective_errors(self.ctx, "broadcast of a table shard"):
                dist.broadcast(buf, src=r)
            parts.append(buf.to(device))
        return parts

    @contextlib.contextmanager
    def local_state(self):
        """``state_dict`` holds this rank's (V_r + 1, D) weight itself while the block lasts (no
        gathering): what sharded checkpoints (``core.training.ranks``) save and load in place."""
        self._local = True
        try:
            yield
        finally:
            self._local = False

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if getattr(self, "_local", False):
            destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach()
            return
        destination[prefix + "weight"] = self.full_weight("cpu")  # the whole table, in host memory

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        full = state_dict[key]
        if full.shape != (self.n_items + 1, self.weight.shape[1]):
            error_msgs.append(f"{key}: expected the whole table {(self.n_items + 1, self.weight.shape[1])}, "
                              f"got {tuple(full.shape)}")
            return
        with torch.no_grad():
            self.weight[1:].copy_(full[1 + self.lo : 1 + self.hi])

    def gather_state(self, state: torch.Tensor, device: torch.device | str | None = "cpu") -> torch.Tensor:
        """A (V_r + 1, D) per-row tensor of this shard (its weight, Adam's exp_avg) -> the whole
        table's (n_items + 1, D), row 0 kept (zero for SASRec's padding row), on ``device``."""
        device = state.device if device is None else device
        return torch.cat([state[:1].to(device), *self._gather(state[1:].contiguous(), device)])
