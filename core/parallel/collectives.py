"""torch.distributed below the losses and the training loop: one process per rank, started by
``torchrun``; what every layer above (catalog-parallel model and loss, the training ranks,
evaluation's reduction) talks through.

- **Context** (``init_from_env``): rank, world size, local rank and device from torchrun's
  environment; NCCL when every rank has a GPU of its own, gloo otherwise (CPU, or K ranks
  sharing fewer GPUs). The process group gets an explicit timeout, so a rank that dies or
  hangs makes the others fail with one ``DistributedError`` line instead of waiting forever.
- **Collectives** (``all_gather_rows``, ``all_reduce``, ``broadcast``, ``barrier``,
  ``gather_objects``, ``mean_over_ranks``): no-ops on one process; a failure inside them is
  one ``DistributedError`` line (``collective_errors``). Decisions such as early stopping are
  taken on rank 0 and broadcast, so ranks can never disagree about whether to go on.
- **Splitting** (``shard_bounds``): each rank's contiguous share of n things (batch rows, items).

Collectives on gloo run on CPU tensors (``_to_comm``): gloo's CUDA support is partial, and
gloo is the backend used when K ranks share one GPU. Process start and exit of a command
(joining with one ``error:`` line, ``os._exit`` under torchrun) belong to the commands:
``experiments/joined.py``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

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


def nccl_fault_env(env) -> None:
    """Makes a lost NCCL rank raise in the survivors, where the one-line error path catches it,
    instead of hanging or letting the watchdog abort the process without a word: async error
    handling on (the watchdog tears down the communicator and the pending collective raises),
    and blocking waits so the raise happens in the Python thread that waits. Values the user
    set are kept. Not yet seen on the GPU with a killed rank (issue 22, point 5)."""
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    env.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")


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
        from core.env import usable_device

        return DistContext(device=usable_device(device, "train.device"), timeout_s=timeout_s)
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
    if backend == "nccl":
        nccl_fault_env(os.environ)
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=dev,
                       backend=backend, timeout_s=timeout_s)


def shutdown(ctx: DistContext, *, wait_for_all: bool = False) -> None:
    """Destroys the process group, if this context started one.

    ``wait_for_all``: a barrier first, so that no rank tears down while another still talks
    to it. Only after success: with a rank lost, the barrier would wait for it. (It did not
    stop a finished rank from aborting later, in Python's finalization:
    ``experiments.joined.leave`` does.)
    """
    if ctx.enabled and dist.is_initialized():
        if wait_for_all:
            try:
                dist.barrier()
            except (dist.DistError, RuntimeError):
                pass  # a rank left already: nothing to wait for
        dist.destroy_process_group()


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
