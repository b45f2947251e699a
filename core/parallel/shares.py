"""A global batch split over ranks, and the loss weighting that makes the split exact.

- **Data** (``shard_batch``): every rank draws the same global shuffle and builds the same
  global batch of ``train.batch_size`` rows (the learning rate is never rescaled); rank r keeps
  its contiguous share (``shard_rows``). K ranks together see exactly the batches of a 1-rank run.
- **The share sizes travel with the share** (``ShardedBatch.shares``): every rank's rows and
  scored positions, counted on the host. The step passes them to the loss and to the model's
  sharded lookup as arguments, so the collectives over unequal shares need no exchange of
  sizes and nothing depends on the order in which batches were drawn.
- **Loss weighting** (``loss_scale``): the loss is a mean over the global batch's scored
  positions, but each rank's loss is a mean over its own; DDP then averages gradients over
  ranks. Scaling rank r's mean by ``n_r * K / N`` (all counts known on the host, so no sync)
  makes DDP's average equal the 1-rank gradient of the global mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.data.batching import Batch
from core.parallel.collectives import shard_bounds


@dataclass(frozen=True)
class RankShares:
    """Every rank's share of one global batch, the same on every rank (host ints).

    ``rows[r]`` batch rows and ``positions[r]`` scored positions of rank r; ``length`` the
    batch's columns L, so rank r looks up ``rows[r] * length`` item ids (``ids``).
    """

    rows: tuple[int, ...]
    positions: tuple[int, ...]
    length: int

    @property
    def ids(self) -> list[int]:
        """Every rank's number of input ids: the counts of the sharded item lookup."""
        return [n * self.length for n in self.rows]


@dataclass(frozen=True)
class ShardedBatch:
    """This rank's share of a global batch (``batch``: its rows, its scored positions) and
    every rank's share sizes (``shares``). Reads like a ``Batch`` (``inputs``, ``targets``,
    ``positions``); the step hands ``shares`` to the loss and the model."""

    batch: Batch
    shares: RankShares

    @property
    def inputs(self) -> torch.Tensor:
        return self.batch.inputs

    @property
    def targets(self) -> torch.Tensor:
        return self.batch.targets

    @property
    def positions(self) -> int:
        return self.batch.positions


def shard_batch(batch: Batch, rank: int, world: int) -> ShardedBatch:
    """Rank ``rank``'s share of the global ``batch``, with every rank's share sizes."""
    rows = batch.row_positions
    if rows is None:  # a batch made elsewhere: counted from the targets (a sync on CUDA)
        rows = (batch.targets != 0).sum(1).cpu().numpy()
    positions = rank_positions(rows, world)
    shares = RankShares(rows=tuple(hi - lo for lo, hi in shard_bounds(len(rows), world)),
                        positions=tuple(positions), length=batch.inputs.shape[1])
    mine = batch._replace(inputs=shard_rows(batch.inputs, rank, world),
                          targets=shard_rows(batch.targets, rank, world),
                          positions=positions[rank], row_positions=shard_rows(rows, rank, world))
    return ShardedBatch(mine, shares)


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
