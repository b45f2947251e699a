"""Training and evaluation batches built with tensor ops on whichever device holds the data.

The whole dataset (CSR offsets + items) lives on one device; a batch is a gather at
``window_end - max_len + arange(max_len)`` per user with positions before the user's start
masked to 0 (left padding). No per-user Python loop and no host sync in the training path, so
with the data on the GPU batches are built there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from core.data.shards import SequenceData

SPLITS = ("valid", "test")


@dataclass(frozen=True)
class DeviceSequences:
    """A SequenceData's CSR arrays as tensors on ``device``; see ``from_data``."""

    offsets: Tensor  # (n_users+1,) int64
    items: Tensor  # (n_interactions,) int32, ids 1..n_items
    train_users: Tensor  # (n_train_users,) int64: users whose train sequence has >= 2 items
    n_users: int
    n_items: int

    @classmethod
    def from_data(cls, data: SequenceData, device: torch.device | str = "cpu") -> "DeviceSequences":
        """Copies ``data`` to ``device`` (items stay int32: half the memory of int64)."""
        train_len = np.diff(data.offsets) - 2
        return cls(
            offsets=torch.from_numpy(np.ascontiguousarray(data.offsets, dtype=np.int64)).to(device),
            items=torch.from_numpy(np.ascontiguousarray(data.items, dtype=np.int32)).to(device),
            train_users=torch.from_numpy(np.flatnonzero(train_len >= 2).astype(np.int64)).to(device),
            n_users=data.n_users,
            n_items=data.n_items,
        )

    @property
    def device(self) -> torch.device:
        return self.items.device


def _windows(seqs: DeviceSequences, start: Tensor, end: Tensor, max_len: int) -> Tensor:
    """(B, max_len) int64: items[end-max_len:end] per row, positions before ``start`` set to 0."""
    pos = end[:, None] - max_len + torch.arange(max_len, device=end.device)  # (B, L)
    valid = pos >= start[:, None]
    return torch.where(valid, seqs.items[pos.clamp(min=0)].long(), 0)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch): the same order on any device and after a resume."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def n_train_batches(seqs: DeviceSequences, *, batch_size: int) -> int:
    """Number of batches ``train_batches`` yields per epoch (the last one may be smaller)."""
    return -(-len(seqs.train_users) // batch_size)


def train_batches(
    seqs: DeviceSequences, *, batch_size: int, max_len: int, epoch: int, seed: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields (inputs (B, L), targets (B, L)) int64 over a seeded permutation of training users.

    For a user's train sequence t: inputs = last max_len of t[:-1], targets = last max_len of
    t[1:], so targets[:, j] is the item after inputs[:, j]; both are 0 where padded. Users with
    fewer than 2 training items are skipped.
    """
    perm = torch.randperm(len(seqs.train_users), generator=epoch_generator(seed, epoch)).to(seqs.device)
    users = seqs.train_users[perm]
    for lo in range(0, len(users), batch_size):
        u = users[lo : lo + batch_size]  # (B,)
        start = seqs.offsets[u]
        train_end = seqs.offsets[u + 1] - 2  # exclusive end of the train sequence
        inputs = _windows(seqs, start, train_end - 1, max_len)  # (B, L)
        targets = _windows(seqs, start + 1, train_end, max_len)  # (B, L)
        yield inputs, targets


def train_batch_positions(
    data: SequenceData, *, batch_size: int, max_len: int, epoch: int, seed: int
) -> list[int]:
    """Scored positions (non-zero targets) of each batch ``train_batches`` yields, from the host.

    Same arguments, same permutation (drawn again from ``epoch_generator``), so entry i is
    ``(targets != 0).sum()`` of batch i without reading anything back from the device: a
    training step can size its compact (N, D) block without a host sync.
    """
    train_len = np.diff(data.offsets) - 2
    used = train_len[train_len >= 2]  # the users of DeviceSequences.train_users, in order
    perm = torch.randperm(len(used), generator=epoch_generator(seed, epoch)).numpy()
    positions = np.minimum(used[perm] - 1, max_len)  # a user scores min(len(train) - 1, L) items
    if not len(positions):
        return []
    return np.add.reduceat(positions, np.arange(0, len(positions), batch_size)).tolist()


def _eval_end(seqs: DeviceSequences, users: Tensor, split: str) -> Tensor:
    """Exclusive end of what the model may see: the train sequence (valid) or + valid target (test)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return seqs.offsets[users + 1] - (2 if split == "valid" else 1)


def eval_batches(
    seqs: DeviceSequences,
    *,
    split: str,
    batch_size: int,
    max_len: int,
    users: Tensor | np.ndarray | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yields (users (B,), inputs (B, L), targets (B,)) int64 for ``split`` "valid" or "test".

    valid: inputs = last max_len of the train sequence, target = seq[-2]; test: inputs = last
    max_len of train + [valid target], target = seq[-1]. ``users`` defaults to all users, in order.
    """
    if users is None:
        users = torch.arange(seqs.n_users, device=seqs.device)
    users = torch.as_tensor(users, dtype=torch.int64).to(seqs.device)
    for lo in range(0, len(users), batch_size):
        u = users[lo : lo + batch_size]
        end = _eval_end(seqs, u, split)
        inputs = _windows(seqs, seqs.offsets[u], end, max_len)
        yield u, inputs, seqs.items[end].long()


def history(seqs: DeviceSequences, users: Tensor, *, split: str) -> tuple[Tensor, Tensor]:
    """(rows, items) int64 pairs: every item each user saw before the ``split`` target.

    ``rows`` index into ``users`` (0..B-1). "valid": the train sequence; "test": train + the
    validation target. Output size depends on the data, so this syncs once on CUDA.
    """
    users = torch.as_tensor(users, dtype=torch.int64).to(seqs.device)
    start = seqs.offsets[users]
    counts = _eval_end(seqs, users, split) - start  # (B,)
    rows = torch.repeat_interleave(torch.arange(len(users), device=seqs.device), counts)  # (H,)
    first = torch.cumsum(counts, 0) - counts  # (B,) where each row's pairs begin
    pos = start[rows] + torch.arange(len(rows), device=seqs.device) - first[rows]
    return rows, seqs.items[pos].long()
