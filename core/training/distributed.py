"""torch.distributed glue: one process per rank, started by ``torchrun``.

What a K-rank run changes, and why each piece is exact rather than approximate:

- **Context** (``init_from_env``): rank, world size, local rank and device from torchrun's
  environment; NCCL when every rank has a GPU of its own, gloo otherwise (CPU, or K ranks
  sharing fewer GPUs). The process group gets an explicit timeout, so a rank that dies or
  hangs makes the others fail with one ``DistributedError`` line instead of waiting forever.
  ``join``: the same for a command-line tool (run.py, the epoch benchmark), failing with one line.
- **Data** (``shard_rows``, ``rank_positions``): every rank draws the same global shuffle and
  builds the same global batch of ``train.batch_size`` rows (the global batch: the learning
  rate is never rescaled); rank r keeps its contiguous share. K ranks together see exactly
  the batches of a 1-rank run.
- **Loss weighting** (``loss_scale``): the loss is a mean over the global batch's scored
  positions, but each rank's loss is a mean over its own; DDP then averages gradients over
  ranks. Scaling rank r's mean by ``n_r * K / N`` (all counts known on the host, so no sync)
  makes DDP's average equal the 1-rank gradient of the global mean.
- **Evaluation** (``eval_shard``, ``reduce_metrics``): rank r ranks the global evaluation
  batches r, r + K, r + 2K, ...; the per-batch float64 sums are gathered and summed in the
  global batch order, and the Coverage masks are OR-ed, so the metrics equal a 1-rank
  evaluation bit for bit (same batches, same additions in the same order).
- **Decisions** (``broadcast``): early stopping and the like are decided on rank 0 and sent to
  all, so ranks can never disagree about whether to go on.
- **The loop's view** (``Ranks``): what ``core.training.loop`` asks of the processes of a run
  (one, or K under torchrun): the DDP model, the weighted or catalog-parallel loss
  (``core.losses.catalog_parallel``), the batch shares, the evaluation split, rank 0 writing.

Collectives on gloo run on CPU tensors (``_to_comm``): gloo's CUDA support is partial, and
gloo is the backend used when K ranks share one GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist

from core.metrics import RankingMetrics

DEFAULT_TIMEOUT_S = 600.0  # long enough for a slow evaluation on rank 0, short enough to notice a dead rank


class DistributedError(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or the group broke."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run. A 1-rank run is ``DistContext()`` (no process group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group (a plain 1-process run)
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        """True when there is a process group to talk to."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run folder and logs."""
        return self.rank == 0


def init_from_env(device: str = "auto", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """The context of this process, from torchrun's RANK / WORLD_SIZE / LOCAL_RANK.

    Without WORLD_SIZE (``python experiments/run.py``) or with WORLD_SIZE=1 this starts no
    process group and returns a 1-rank context on ``device``. ``device``: "auto" (a GPU per
    local rank when there are GPUs), "cpu" or "cuda". NCCL needs one GPU per rank; when
    LOCAL_WORLD_SIZE ranks share fewer GPUs, ranks share them round-robin and talk over gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device not in ("auto", "cpu", "cuda") and world > 1:
        raise ValueError(f"under torchrun the device must be 'auto', 'cpu' or 'cuda' "
                         f"(each rank picks its own GPU), got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if world == 1:
        from core.env import resolve_device

        return DistContext(device=resolve_device(device), timeout_s=timeout_s)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if use_cuda:
        n_gpus = torch.cuda.device_count()
        if n_gpus == 0:
            raise ValueError("device 'cuda' requested but no CUDA device is visible")
        dev = torch.device("cuda", local_rank % n_gpus)
        torch.cuda.set_device(dev)
        backend = "nccl" if n_gpus >= local_world else "gloo"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=dev,
                       backend=backend, timeout_s=timeout_s)


class JoinError(ValueError):
    """This process cannot start: ``status`` 2 for a bad ``train.device`` (one process), 1 when
    the torchrun process group cannot be joined. The message is one line."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def join(device: str = "auto", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """``init_from_env`` for a command-line tool (experiments/run.py, the epoch benchmark):
    its failures as a ``JoinError`` that the tool prints as one ``error:`` line."""
    try:
        return init_from_env(device, timeout_s=timeout_s)
    except (ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if os.environ.get("WORLD_SIZE", "1") == "1":  # one process: only the device can be wrong
            raise JoinError(f"bad gin config: train.device = {device!r}: {first}", 2) from err
        raise JoinError(f"cannot join the torchrun process group: {first}", 1) from err


def shutdown(ctx: DistContext, *, wait_for_all: bool = False) -> None:
    """Destroys the process group, if this context started one.

    ``wait_for_all``: a barrier first, so that no rank tears down while another still talks
    to it. Only after success: with a rank lost, the barrier would wait for it. (It did not
    stop a finished rank from aborting later, in Python's finalization: ``leave`` does.)
    """
    if ctx.enabled and dist.is_initialized():
        if wait_for_all:
            try:
                dist.barrier()
            except (dist.DistError, RuntimeError):
                pass  # a rank left already: nothing to wait for
        dist.destroy_process_group()


def run_joined(device: str, body, *, what: str) -> int:
    """A command-line tool's main under torchrun or alone: joins the group (``join``), returns
    ``body(ctx)``, and turns a bad device or a lost rank into one ``error:`` line and its exit
    status (2 / 1); the group is shut down whatever happens. ``what`` names the work in the line."""
    try:
        ctx = join(device)
    except JoinError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.status
    ok = False
    try:
        status = body(ctx)
        ok = True
        return status
    except RuntimeError as err:  # another rank died or hung (DDP says so inside backward too)
        if not (ctx.enabled and is_collective_failure(err)):
            raise
        if not isinstance(err, DistributedError):
            err = failure(ctx, what, err)
        print(f"error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        shutdown(ctx, wait_for_all=ok)


def leave(status: int) -> NoReturn:
    """The exit of a command-line tool whose main ran ``run_joined``: ``sys.exit(status)``,
    except under torchrun (WORLD_SIZE > 1), where the process ends with ``os._exit`` once
    logging, stdout and stderr are flushed. There the group is shut down and every output is
    written and closed (atomic writes) by now, and Python's own finalization is what can go
    wrong: a gloo thread with no Python frame aborts it ("terminate called without an active
    exception", SIGABRT) after a finished run, which torchrun reports as a failed one; 4 runs
    in 60 of the 2-rank CPU epoch benchmark on a busy 2-core machine did, even after the
    closing barrier of ``shutdown``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def is_collective_failure(err: BaseException) -> bool:
    """A failed gloo/NCCL operation (a dead or stuck peer), not a bug of this rank.

    DDP's gradient all-reduce fails inside ``loss.backward()`` with a plain RuntimeError
    that names its backend, so the message is what tells the two apart there.
    """
    text = str(err)
    return isinstance(err, (DistributedError, dist.DistError)) or "gloo" in text or "NCCL" in text


def failure(ctx: DistContext, what: str, err: BaseException) -> DistributedError:
    """The one-line error of a collective ``what`` that failed with ``err``."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DistributedError(f"rank {ctx.rank}/{ctx.world}: {what} failed: another rank died or did "
                            f"not answer within {ctx.timeout_s:g} s ({first[:200]})")


@contextlib.contextmanager
def collective_errors(ctx: DistContext, what: str):
    """Turns a failed collective inside the block into one ``DistributedError`` line.

    A dead peer shows up as a closed connection, a hung one as a timeout after
    ``ctx.timeout_s``; either way this rank cannot go on, and the message says which.
    """
    try:
        yield
    except (dist.DistError, RuntimeError) as err:
        if isinstance(err, DistributedError) or not ctx.enabled:
            raise
        raise failure(ctx, what, err) from err


# --- splitting work -------------------------------------------------------------------------


def shard_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """[lo, hi) of each rank's contiguous share of ``n`` things; sizes differ by at most one.

    The first ``n % world`` ranks take one more. Used for batch rows and for item ranges.
    """
    if world < 1 or n < 0:
        raise ValueError(f"shard_bounds: need n >= 0 and world >= 1, got n={n}, world={world}")
    base, extra = divmod(n, world)
    bounds, lo = [], 0
    for r in range(world):
        hi = lo + base + (r < extra)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def shard_rows(rows, rank: int, world: int):
    """Rank ``rank``'s contiguous share of a global batch (tensor or array, rows first)."""
    lo, hi = shard_bounds(len(rows), world)[rank]
    return rows[lo:hi]


def rank_positions(row_positions: np.ndarray | Sequence[int], world: int) -> list[int]:
    """Scored positions of each rank's share of one global batch, from per-row counts (host).

    ``row_positions`` (B,): scored positions of each row of the global batch in batch order
    (a user with a training sequence t scores min(len(t) - 1, max_len)).
    """
    counts = np.asarray(row_positions, dtype=np.int64)
    return [int(counts[lo:hi].sum()) for lo, hi in shard_bounds(len(counts), world)]


def loss_scale(local_positions: int, global_positions: int, world: int) -> float:
    """Factor for this rank's mean loss so that DDP's averaged gradient is the global mean's.

    Global mean = sum_r n_r * mean_r / N; DDP averages, i.e. divides the sum of the ranks'
    gradients by K, so rank r contributes mean_r * (n_r * K / N). A rank with no positions
    contributes 0 (its loss must still be part of the graph: see ``scaled_loss``).
    """
    if global_positions <= 0:
        raise ValueError(f"loss_scale: the global batch has {global_positions} scored positions")
    return local_positions * world / global_positions


def scaled_loss(loss_fn, e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, *,
                local_positions: int, global_positions: int, world: int) -> torch.Tensor:
    """``loss_fn(e, c, targets) * loss_scale(...)``; a zero that still reaches every parameter
    when this rank's share holds no scored position (a mean over none would be NaN, and DDP
    needs every rank to produce gradients for the same parameters)."""
    if local_positions == 0:
        return (e.sum() + c.sum()) * 0.0
    return loss_fn(e, c, targets) * loss_scale(local_positions, global_positions, world)


# --- collectives ----------------------------------------------------------------------------


def _to_comm(ctx: DistContext, t: torch.Tensor) -> torch.Tensor:
    """The tensor as the backend wants it: on the GPU for NCCL, on the CPU for gloo."""
    return t.to(ctx.device) if ctx.backend == "nccl" else t.cpu()


def all_gather_rows(ctx: DistContext, t: torch.Tensor, counts: Sequence[int]) -> list[torch.Tensor]:
    """Every rank's ``t`` (counts[r], ...) -> the list of all of them, on ``t``'s device.

    Row counts may differ between ranks; every rank knows them (``counts``), so the tensors
    are padded to the largest and cut back without an extra exchange of sizes.
    """
    if t.shape[0] != counts[ctx.rank]:
        raise ValueError(f"all_gather_rows: rank {ctx.rank} holds {t.shape[0]} rows, counts say {counts[ctx.rank]}")
    if not ctx.enabled:
        return [t]
    longest = max(counts)
    padded = _to_comm(ctx, torch.nn.functional.pad(t, (0, 0) * (t.ndim - 1) + (0, longest - t.shape[0])))
    parts = [torch.empty_like(padded) for _ in range(ctx.world)]
    with collective_errors(ctx, "all_gather"):
        dist.all_gather(parts, padded.contiguous())
    return [p[:n].to(t.device) for p, n in zip(parts, counts)]


def all_reduce(ctx: DistContext, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """A reduced copy of ``t`` over all ranks (``t`` itself is left alone), on ``t``'s device."""
    if not ctx.enabled:
        return t.clone()
    buf = _to_comm(ctx, t).clone()
    with collective_errors(ctx, "all_reduce"):
        dist.all_reduce(buf, op=op)
    return buf.to(t.device)


def broadcast(ctx: DistContext, obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a picklable value: a decision, a dict of metrics)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    with collective_errors(ctx, "broadcast"):
        dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def barrier(ctx: DistContext) -> None:
    """Waits for every rank (e.g. until rank 0 has written a checkpoint)."""
    if ctx.enabled:
        with collective_errors(ctx, "barrier"):
            dist.barrier()


def gather_objects(ctx: DistContext, obj: Any) -> list:
    """Every rank's ``obj`` (a picklable value), in rank order, on every rank ([obj] on one)."""
    if not ctx.enabled:
        return [obj]
    box: list = [None] * ctx.world
    with collective_errors(ctx, "all_gather_object"):
        dist.all_gather_object(box, obj)
    return box


def mean_over_ranks(ctx: DistContext, value: float) -> float:
    """The mean of a host float over ranks (e.g. an epoch's loss for the log)."""
    if not ctx.enabled:
        return value
    return float(all_reduce(ctx, torch.tensor([value], dtype=torch.float64))[0]) / ctx.world


# --- evaluation -----------------------------------------------------------------------------


def eval_shard(n_users: int, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """Users rank ``rank`` evaluates: the global batches rank, rank + K, ... concatenated.

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


def eval_args(ctx: DistContext, n_users: int, batch_size: int) -> dict:
    """Extra ``rank_split`` arguments for this rank: its users and the exact reduction ({} on 1 rank)."""
    if not ctx.enabled:
        return {}
    return {"users": eval_shard(n_users, batch_size, ctx.rank, ctx.world),
            "reduce": lambda metrics: reduce_metrics(ctx, metrics)}


# --- a data-parallel (and catalog-parallel) run -----------------------------------------------


class _DDP(torch.nn.parallel.DistributedDataParallel):
    """DDP that still answers ``catalog()``, which the step calls on the model it is given."""

    def catalog(self) -> torch.Tensor:
        return self.module.catalog()


class Ranks:
    """``fit``'s view of the processes of a run: one (``Ranks()``) or the ranks of torchrun.

    With one process every member is a no-op (the model, loss and batches pass through). With
    K ranks (a ``ctx`` from ``init_from_env``):

    - ``shard(model)``: with ``catalog_parallel`` the item table becomes this rank's shard
      (``ShardedItemEmbedding``), which DDP leaves alone (its gradients are exact on their
      owner); ``prepare(model)``: the model the step trains, DDP around it;
      ``attach(optimizer)``: the optimizer's checkpoints hold the whole table's Adam state.
    - ``loss(loss_fn)``: this rank's loss for its share of the current global batch: the local
      mean scaled by ``loss_scale``, or the catalog-parallel CE of the whole global batch.
    - ``batches``: this rank's share of each global batch (``shard_rows``), with its counts.
    - ``mean``, ``eval_args``, ``evaluating``, ``decide``, ``barrier``, ``rng_state`` /
      ``own_rng_state``, ``settings``: the epoch loss over ranks; the evaluation split and
      reduced exactly (with the whole table gathered while it runs under catalog-parallel);
      early stopping decided by rank 0; waiting for rank 0's files; every rank's RNG in the
      checkpoint; what a resume must keep (the number of ranks, catalog-parallel or not).
    """

    def __init__(self, ctx: DistContext | None = None, *, catalog_parallel: bool = False):
        self.ctx = ctx or DistContext()
        self.writer = self.ctx.is_main
        self.device = self.ctx.device
        # one process holds the whole table: catalog-parallel changes nothing there
        self.catalog_parallel = catalog_parallel and self.ctx.enabled
        self._table = None  # the ShardedItemEmbedding, under catalog_parallel
        self._counts: list[int] = []  # every rank's scored positions in the current global batch

    @property
    def enabled(self) -> bool:
        return self.ctx.enabled

    def settings(self) -> dict:
        """Recorded with the run's settings: a resume needs the same K (the RNG states, the
        shards). Empty for one process, so 1-process runs record what they always did."""
        if not self.enabled:
            return {}
        return {"parallel.world_size": self.ctx.world, "train.catalog_parallel": self.catalog_parallel}

    # --- building ---

    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` with this rank's part of the item table only (catalog-parallel), else as is.

        Called before the model moves to its device, so the device never holds the whole table.
        """
        if self.catalog_parallel:
            from core.losses.catalog_parallel import ShardedItemEmbedding

            self._table = ShardedItemEmbedding(model.item_emb.weight, ctx=self.ctx, n_items=model.n_items)
            model.item_emb = self._table
            # the shard differs on every rank and its gradient is already exact: DDP must not average it
            _DDP._set_params_and_buffers_to_ignore_for_model(model, ["item_emb.weight"])
        return model

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model the step trains: DDP around ``model`` (which keeps plain state-dict keys)."""
        if not self.enabled:
            return model
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        return _DDP(model, device_ids=device_ids)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Checkpoints of ``optimizer`` hold the whole table's Adam state (catalog-parallel)."""
        if self._table is None:
            return
        table = self._table
        index = next(i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])
                     if p is table.weight)

        def gather(opt, state_dict):
            per_param = state_dict["state"].get(index)
            if per_param is not None:  # a copy: the packed state shares its dicts with the optimizer
                state_dict["state"][index] = {k: table.gather_state(v) if _per_row(v, table) else v
                                              for k, v in per_param.items()}
            return state_dict

        def slice_(opt, state_dict):
            per_param = state_dict["state"].get(index)
            if per_param is not None:
                state_dict = {**state_dict, "state": {**state_dict["state"], index: {
                    k: table.slice_state(v) if _is_whole(v, table) else v for k, v in per_param.items()}}}
            return state_dict

        optimizer.register_state_dict_post_hook(gather)
        optimizer.register_load_state_dict_pre_hook(slice_)

    def loss(self, loss_fn):
        """The loss the step calls for this rank's share of the current global batch."""
        if not self.enabled:
            return loss_fn
        ctx = self.ctx
        if self.catalog_parallel:
            from core.losses.catalog_parallel import catalog_parallel_ce

            n_items = self._table.n_items

            def cp_loss(e, c, targets):
                return catalog_parallel_ce(e, c, targets, ctx=ctx, n_items=n_items, counts=self._counts,
                                           e_grad_scale=ctx.world)
            return cp_loss

        def dp_loss(e, c, targets):
            return scaled_loss(loss_fn, e, c, targets, local_positions=self._counts[ctx.rank],
                               global_positions=sum(self._counts), world=ctx.world)
        return dp_loss

    # --- the epoch ---

    def batches(self, batches):
        """This rank's share of each global batch (a ``Batch`` with this share's positions)."""
        if not self.enabled:
            yield from batches
            return
        rank, world = self.ctx.rank, self.ctx.world
        for batch in batches:
            rows = batch.row_positions
            if rows is None:  # a batch made elsewhere: counted from the targets (a sync on CUDA)
                rows = (batch.targets != 0).sum(1).cpu().numpy()
            self._counts = rank_positions(rows, world)
            if self._table is not None:  # ids per rank for the sharded lookup: rows x L
                length = batch.inputs.shape[1]
                self._table.counts = [(hi - lo) * length for lo, hi in shard_bounds(len(rows), world)]
            yield batch._replace(inputs=shard_rows(batch.inputs, rank, world),
                                 targets=shard_rows(batch.targets, rank, world),
                                 positions=self._counts[rank], row_positions=shard_rows(rows, rank, world))

    def mean(self, value: float) -> float:
        return mean_over_ranks(self.ctx, value)

    def gather(self, value) -> list:
        """Every rank's ``value`` in rank order (e.g. its peak memory), on every rank."""
        return gather_objects(self.ctx, value)

    # --- evaluation, decisions, files ---

    def eval_args(self, n_users: int, batch_size: int) -> dict:
        return eval_args(self.ctx, n_users, batch_size)

    @contextlib.contextmanager
    def evaluating(self, model: torch.nn.Module):
        """Evaluation ranks each user against the whole catalog: under catalog-parallel the
        table is gathered (V x D on each rank) for as long as the block lasts."""
        if self._table is None or model.item_emb is not self._table:
            yield
            return
        full = torch.nn.Embedding.from_pretrained(self._table.full_weight(), freeze=True, padding_idx=0)
        model.item_emb = full
        try:
            yield
        finally:
            model.item_emb = self._table

    def decide(self, value):
        """Rank 0's ``value`` (e.g. "stop early") on every rank."""
        return broadcast(self.ctx, value)

    def barrier(self) -> None:
        barrier(self.ctx)

    def rng_state(self, state: dict):
        """What the checkpoint keeps of the RNGs: ``state`` itself for one process, every
        rank's (a list, rank 0 writes it) for K."""
        if not self.enabled:
            return state
        return gather_objects(self.ctx, state)

    def own_rng_state(self, saved):
        """This process's entry of what ``rng_state`` returned."""
        if not self.enabled:
            return saved
        if not isinstance(saved, list) or len(saved) != self.ctx.world:
            raise ValueError(f"the checkpoint holds RNG states of another number of ranks, not {self.ctx.world}")
        return saved[self.ctx.rank]


def _per_row(t, table) -> bool:
    return isinstance(t, torch.Tensor) and t.shape == table.weight.shape


def _is_whole(t, table) -> bool:
    return isinstance(t, torch.Tensor) and t.ndim == 2 and t.shape[0] == table.n_items + 1


@contextlib.contextmanager
def main_first(ctx: DistContext):
    """Rank 0 runs the block first (e.g. writes a data cache), then the others (which read it)."""
    if ctx.enabled and not ctx.is_main:
        barrier(ctx)
    yield
    if ctx.enabled and ctx.is_main:
        barrier(ctx)
