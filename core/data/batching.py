"""Training and evaluation batches built with tensor ops on whichever device holds the data.

The whole dataset (CSR offsets + items) lives on one device; a batch is a gather at
``window_end - max_len + arange(max_len)`` per user with positions before the user's start
masked to 0 (left padding). No per-user Python loop and no host sync in the training path, so
with the data on the GPU batches are built there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor

from core.data.shards import SequenceData

SPLITS = ("valid", "test")  # evaluation splits; contexts add "full" (every interaction)


def training_users(offsets: np.ndarray) -> np.ndarray:
    """(n_train_users,) int64: the users who train, i.e. whose training sequence (all but the
    last two items) has >= 2 items: one input and its next item as target. The one place this
    rule is written; every count of training sequences or positions derives from it."""
    return np.flatnonzero(np.diff(offsets) - 2 >= 2).astype(np.int64)


@dataclass(frozen=True)
class DeviceSequences:
    """A SequenceData's CSR arrays as tensors on ``device``; see ``from_data``."""

    offsets: Tensor  # (n_users+1,) int64
    items: Tensor  # (n_interactions,) int32, ids 1..n_items
    train_users: Tensor  # (n_train_users,) int64: ``training_users``, on the device
    train_lengths: np.ndarray  # (n_train_users,) int64 on the host: their training lengths
    n_users: int
    n_items: int
    lengths: np.ndarray  # (n_users,) int64 on the host: every user's whole sequence length

    @classmethod
    def from_data(cls, data: SequenceData, device: torch.device | str = "cpu") -> "DeviceSequences":
        """Copies ``data`` to ``device`` (items stay int32: half the memory of int64)."""
        users = training_users(data.offsets)
        return cls(
            offsets=torch.from_numpy(np.ascontiguousarray(data.offsets, dtype=np.int64)).to(device),
            items=torch.from_numpy(np.ascontiguousarray(data.items, dtype=np.int32)).to(device),
            train_users=torch.from_numpy(users).to(device),
            train_lengths=(np.diff(data.offsets)[users] - 2).astype(np.int64),
            n_users=data.n_users,
            n_items=data.n_items,
            lengths=np.diff(data.offsets).astype(np.int64),
        )

    @property
    def device(self) -> torch.device:
        return self.items.device


def _windows(seqs: DeviceSequences, start: Tensor, end: Tensor, max_len: int) -> Tensor:
    """(B, max_len) int64: items[end-max_len:end] per row, positions before ``start`` set to 0."""
    pos = end[:, None] - max_len + torch.arange(max_len, device=end.device)  # (B, L)
    valid = pos >= start[:, None]
    return torch.where(valid, seqs.items[pos.clamp(min=0)].long(), 0)


def torch_windows(seqs: DeviceSequences, users: Tensor, *, back: int, max_len: int,
                  shifted: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """``windows`` in tensor ops (about ten launches a window): the CPU's path and the kernel's oracle."""
    start, end = seqs.offsets[users], seqs.offsets[users + 1] - back
    out = _windows(seqs, start, end, max_len)
    return (out, _windows(seqs, start + 1, end + 1, max_len)) if shifted else out


def kernel_windows(seqs: DeviceSequences, users: Tensor, *, back: int, max_len: int,
                   shifted: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """``windows`` in one Triton launch (``core/data/windows_kernel.py``): CUDA tensors, or CPU
    tensors under the Triton interpreter (tests/test_windows_kernel.py)."""
    import triton

    from core.data.windows_kernel import windows_kernel

    users = users.to(torch.int64).contiguous()  # no-op for a batch's slice of the epoch's users
    out = torch.empty((users.shape[0], max_len), dtype=torch.int64, device=users.device)
    nxt = torch.empty_like(out) if shifted else out
    if users.numel() and max_len:
        windows_kernel[(users.shape[0],)](seqs.items, seqs.offsets, users, out, nxt, back, max_len,
                                          BLOCK_L=max(16, triton.next_power_of_2(max_len)), SHIFTED=shifted, num_warps=1)
    return (out, nxt) if shifted else out


def windows(seqs: DeviceSequences, users: Tensor, *, back: int, max_len: int,
            shifted: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """(B, max_len) int64 for ``users`` (B,): each user's last ``max_len`` items before the one
    ``back`` items from the end of their sequence (exclusive), left-padded with 0; ``shifted``:
    also the window one item later over the same slots (the targets: 0 where the input is 0),
    as a pair. On CUDA one kernel launch (``kernel_windows``: the tensor-op path's ~20 launches,
    advanced indexing among them, took 0.3-0.7 ms of host time a batch on H200 hosts, against
    a beauty-like step's 0.8 ms of GPU work; one launch made that epoch 2.26 ->
    2.10 s, experiments/bench/NOTES_speed.md, eleventh session); elsewhere ``torch_windows``.
    Both give the same tensors (tests/test_windows_kernel.py)."""
    if back < int(shifted):
        raise ValueError(f"windows: a shifted window needs back >= 1, got {back}")
    run = kernel_windows if users.is_cuda else torch_windows
    return run(seqs, users, back=back, max_len=max_len, shifted=shifted)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch): the same order on any device and after a resume."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class Batch(NamedTuple):
    """One training batch. ``positions`` = ``(targets != 0).sum()``, counted on the host from
    the sequence lengths, so a step can size its compact (N, D) block without a device sync."""

    inputs: Tensor  # (B, L) int64, left-padded with 0
    targets: Tensor  # (B, L) int64: targets[:, j] is the item after inputs[:, j]; 0 = none
    positions: int
    # (B,) int64 on the host: each row's count; a data-parallel run splits the batch by rows
    # (core.parallel.shares.shard_batch) and needs every share's count without a sync
    row_positions: np.ndarray | None = None


class TrainBatches:
    """The training batches of every epoch: owns the shuffle and the per-batch position counts.

    ``epoch(e)`` draws one permutation of the training users from ``epoch_generator(seed, e)``
    (on the CPU: the same order on any device and after a resume) and yields ``Batch``es of
    ``batch_size`` users (the last may be smaller). For a user's training sequence t:
    inputs = last max_len of t[:-1], targets = last max_len of t[1:]; a user scores
    min(len(t) - 1, max_len) positions. A data-parallel run would split each global batch here.
    """

    def __init__(self, seqs: DeviceSequences, *, batch_size: int, max_len: int, seed: int):
        self.seqs, self.batch_size, self.max_len, self.seed = seqs, batch_size, max_len, seed
        self.scored = np.minimum(seqs.train_lengths - 1, max_len)  # (n_train_users,) host

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-len(self.scored) // self.batch_size)

    @property
    def sequences_per_epoch(self) -> int:
        return len(self.scored)

    @property
    def positions_per_epoch(self) -> int:
        return int(self.scored.sum())

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of ``epoch``, in its seeded order."""
        seqs = self.seqs
        perm = torch.randperm(len(self.scored), generator=epoch_generator(self.seed, epoch))
        scored = self.scored[perm.numpy()]  # (n_train_users,) host, in batch order
        users = seqs.train_users[perm.to(seqs.device)]
        for lo in range(0, len(users), self.batch_size):
            u = users[lo : lo + self.batch_size]  # (B,)
            # the train sequence ends 2 before the user's last item; inputs stop 1 before it
            inputs, targets = windows(seqs, u, back=3, max_len=self.max_len, shifted=True)  # (B, L) each
            rows = scored[lo : lo + self.batch_size]  # (B,)
            yield Batch(inputs, targets, int(rows.sum()), rows)


# Items at the end of a user's sequence that a split's context leaves out: the valid and test
# targets ("valid"), the test target ("test"), none ("full": what a recommendation looks at).
CONTEXT_BACK = {"valid": 2, "test": 1, "full": 0}


def _context_back(split: str) -> int:
    if split not in CONTEXT_BACK:
        raise ValueError(f"split must be one of {(*SPLITS, 'full')}, got {split!r}")
    return CONTEXT_BACK[split]


def _context_end(seqs: DeviceSequences, users: Tensor, split: str) -> Tensor:
    """Exclusive end of what the model may see (``CONTEXT_BACK``), where a split's target sits."""
    return seqs.offsets[users + 1] - _context_back(split)


def context_windows(seqs: DeviceSequences, users: Tensor, *, split: str, max_len: int) -> Tensor:
    """(B, max_len) int64: the last ``max_len`` items each of ``users`` (B,) may see for
    ``split`` ("valid", "test" or "full"), left-padded with 0: the model's input."""
    return windows(seqs, users, back=_context_back(split), max_len=max_len)


def eval_order(seqs: DeviceSequences) -> np.ndarray:
    """Every user, shortest sequence first (ties in id order): the order evaluation ranks users
    in, so that a batch holds users of similar lengths and ``eval_batches`` can cut its left
    padding. (n_users,) int64 on the host."""
    return np.argsort(seqs.lengths, kind="stable").astype(np.int64)


class EvalBatch(NamedTuple):
    """One batch of ``eval_batches``: users (B,), inputs (B, L) and targets (B,), int64 on the
    device, and ``n_seen``, the number of (row, item) history pairs ``history`` will return for
    them (known on the host, so ``history(..., size=n_seen)`` needs no sync)."""

    users: Tensor
    inputs: Tensor
    targets: Tensor
    n_seen: int


def eval_batches(
    seqs: DeviceSequences,
    *,
    split: str,
    batch_size: int,
    max_len: int,
    users: Tensor | np.ndarray | None = None,
    pow2_width: bool = False,
) -> Iterator[EvalBatch]:
    """Yields ``EvalBatch`` (users (B,), inputs (B, L), targets (B,), n_seen) for ``split``
    "valid" or "test".

    valid: inputs = the train sequence, target = seq[-2]; test: inputs = train + [valid target],
    target = seq[-1]. Inputs are left-padded to L = the batch's longest input, at most
    ``max_len``: the columns cut are padding in every row, and SASRec counts positions from the
    right and masks padding, so its last column is the same to fp32 rounding (the body's cost
    follows L: a beauty-like batch of short histories runs on a few columns instead of 50).
    ``users`` defaults to every user in ``eval_order``; L is computed on the host (no sync).
    ``pow2_width``: L rounded up to a power of two (at most ``max_len``), so that a split's
    batches come in a few shapes (``core.evaluation.BatchGraphs``: one CUDA graph per shape).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    order = eval_order(seqs) if users is None else np.asarray(torch.as_tensor(users, dtype=torch.int64).cpu())
    seen_len = seqs.lengths[order] - {"valid": 2, "test": 1}[split]  # (n,): the whole context
    inputs_len = np.minimum(seen_len, max_len)  # (n,)
    users = torch.from_numpy(order).to(seqs.device)
    for lo in range(0, len(users), batch_size):
        u = users[lo : lo + batch_size]
        width = max(1, int(inputs_len[lo : lo + batch_size].max()))
        if pow2_width:
            width = min(1 << (width - 1).bit_length(), max(max_len, 1))
        end = _context_end(seqs, u, split)  # (B,): where each input ends and its target sits
        yield EvalBatch(u, windows(seqs, u, back=_context_back(split), max_len=width),  # inputs (B, width)
                        seqs.items[end].long(),
                        int(seen_len[lo : lo + batch_size].sum()))


def history(seqs: DeviceSequences, users: Tensor, *, split: str, size: int | None = None) -> tuple[Tensor, Tensor]:
    """(rows, items) int64 pairs: every item each user saw before the ``split`` target.

    ``rows`` index into ``users`` (0..B-1). "valid": the train sequence; "test": train + the
    validation target; "full": everything. The output's size depends on the data: give it as
    ``size`` (``EvalBatch.n_seen``) where the caller knows it, else this syncs once on CUDA.
    """
    users = torch.as_tensor(users, dtype=torch.int64).to(seqs.device)
    start = seqs.offsets[users]
    counts = _context_end(seqs, users, split) - start  # (B,)
    rows = torch.repeat_interleave(torch.arange(len(users), device=seqs.device), counts, output_size=size)  # (H,)
    first = torch.cumsum(counts, 0) - counts  # (B,) where each row's pairs begin
    pos = start[rows] + torch.arange(len(rows), device=seqs.device) - first[rows]
    return rows, seqs.items[pos].long()


# --- compaction: a batch's real positions, in row-major order, sized on the host --------------


def compact_index(mask: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) int64 flat indices of ``mask``'s True entries in row-major order, without a sync.

    What ``mask.flatten().nonzero()`` gives, but sized by the caller (``n`` = the number of True
    entries, known on the host), so the device never has to report a count back. Real entries
    go to slots 0..n-1 in order; the rest all land on the spare slot n, which is dropped.
    """
    flat = mask.flatten()  # (B*L,)
    if not flat.is_cuda and n != int(flat.sum()):  # free on the CPU: catches a wrong count in tests
        raise ValueError(f"compact_index: the mask has {int(flat.sum())} True entries, not {n}")
    slot = torch.where(flat, flat.cumsum(0) - 1, n)  # (B*L,)
    index = torch.zeros(n + 1, dtype=torch.int64, device=flat.device)
    index.scatter_(0, slot, torch.arange(flat.numel(), device=flat.device))
    return index[:n]


def padded_compact_index(mask: torch.Tensor, n_pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index (n_pad,), valid (n_pad,)): True positions of ``mask`` first, in order, then filler.

    ``n_pad`` must be at least the number of True entries. Filler slots point at position 0
    and are marked invalid on the device, so nothing here needs the count on the host.
    """
    flat = mask.flatten()  # (B*L,)
    rank = flat.cumsum(0)  # (B*L,): 1-based slot of each True entry
    slot = torch.where(flat, rank - 1, n_pad)
    index = torch.zeros(n_pad + 1, dtype=torch.int64, device=flat.device)
    index.scatter_(0, slot, torch.arange(flat.numel(), device=flat.device))
    valid = torch.arange(n_pad, device=flat.device) < rank[-1]
    return index[:n_pad], valid
