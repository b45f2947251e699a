"""Batches against a slow pure-Python reference: windows, alignment, skip rule, order, eval, history."""

import numpy as np
import pytest
import torch

from core.data.batching import (
    DeviceSequences,
    TrainBatches,
    context_windows,
    eval_batches,
    history,
    training_users,
)
from core.data.shards import SequenceData

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_data(seed=0, n_users=37, n_items=50):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 15, n_users)  # includes users with a 1-item train sequence
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(1, n_items + 1, offsets[-1]).astype(np.int32)
    return SequenceData(offsets=offsets, items=items, n_users=n_users, n_items=n_items)


def seq(data, u):
    return data.items[data.offsets[u] : data.offsets[u + 1]].tolist()


def left_pad(values, max_len):
    values = values[-max_len:]
    return [0] * (max_len - len(values)) + values


def reference_train(data, u, max_len):
    t = seq(data, u)[:-2]
    return left_pad(t[:-1], max_len), left_pad(t[1:], max_len)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_len", [1, 4, 20])
def test_train_batches_match_reference(device, max_len):
    data = make_data()
    seqs = DeviceSequences.from_data(data, device)
    batcher = TrainBatches(seqs, batch_size=8, max_len=max_len, seed=5)
    batches = list(batcher.epoch(2))
    eligible = [u for u in range(data.n_users) if len(seq(data, u)) - 2 >= 2]
    assert len(eligible) < data.n_users  # the skip rule is exercised
    assert training_users(data.offsets).tolist() == eligible
    assert len(batches) == len(batcher) == -(-len(eligible) // 8)
    assert batcher.sequences_per_epoch == len(eligible)
    rows = []
    for inputs, targets, positions, row_positions in batches:
        assert positions == int((targets != 0).sum())  # counted on the host, no device read
        assert row_positions.tolist() == (targets != 0).sum(1).tolist()
        assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape[1] == max_len
        assert inputs.device.type == device
        rows += list(zip(inputs.tolist(), targets.tolist()))
    # Every eligible user exactly once; rows match the reference windows.
    expected = sorted(reference_train(data, u, max_len) for u in eligible)
    assert sorted((tuple(i), tuple(t)) for i, t in rows) == sorted((tuple(i), tuple(t)) for i, t in expected)
    for inputs, targets, *_ in batches:
        assert torch.equal(inputs == 0, targets == 0)  # padding aligned


def test_targets_are_next_items():
    data = make_data(1)
    seqs = DeviceSequences.from_data(data)
    inputs, targets, *_ = next(TrainBatches(seqs, batch_size=64, max_len=30, seed=0).epoch(0))
    pairs = {(a, b) for u in range(data.n_users) for a, b in zip(seq(data, u)[:-3], seq(data, u)[1:-2])}
    mask = inputs > 0
    assert {(a, b) for a, b in zip(inputs[mask].tolist(), targets[mask].tolist())} <= pairs


def test_order_is_seeded_by_seed_and_epoch():
    seqs = DeviceSequences.from_data(make_data())

    def first_rows(epoch, seed):
        return [b.inputs.tolist() for b in TrainBatches(seqs, batch_size=8, max_len=6, seed=seed).epoch(epoch)]

    assert first_rows(3, 1) == first_rows(3, 1)
    assert first_rows(3, 1) != first_rows(4, 1) and first_rows(3, 1) != first_rows(3, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("split", ["valid", "test"])
def test_eval_batches_and_history(device, split):
    data = make_data(2)
    seqs = DeviceSequences.from_data(data, device)
    users = torch.tensor([5, 0, 36, 5, 17])
    max_len = 6
    got_users, got_inputs, got_targets = [], [], []
    for u, inputs, targets, n_seen in eval_batches(seqs, split=split, batch_size=2, max_len=max_len, users=users):
        got_users += u.tolist()
        got_inputs += inputs.tolist()
        got_targets += targets.tolist()
        # n_seen is the size history() finds on its own; given as size, the same pairs come back
        rows, items = history(seqs, u, split=split)
        assert n_seen == len(rows)
        sized = history(seqs, u, split=split, size=n_seen)
        assert torch.equal(sized[0], rows) and torch.equal(sized[1], items)
    assert got_users == users.tolist()
    for u, inputs, target in zip(got_users, got_inputs, got_targets):
        s = seq(data, u)
        seen = s[:-2] if split == "valid" else s[:-1]
        width = len(inputs)  # the batch's longest input (at most max_len): only padding is cut
        assert inputs == left_pad(seen, max_len)[max_len - width:]
        assert not any(left_pad(seen, max_len)[:max_len - width])
        assert target == (s[-2] if split == "valid" else s[-1])

    rows, items = history(seqs, users.to(device), split=split)
    got = sorted(zip(rows.tolist(), items.tolist()))
    expected = sorted((r, i) for r, u in enumerate(users.tolist())
                      for i in (seq(data, u)[:-2] if split == "valid" else seq(data, u)[:-1]))
    assert got == expected


def test_eval_defaults_to_all_users_shortest_first_and_checks_split():
    data = make_data(3)
    seqs = DeviceSequences.from_data(data)
    users = torch.cat([b.users for b in eval_batches(seqs, split="test", batch_size=10, max_len=3)])
    lengths = np.diff(data.offsets)
    assert sorted(users.tolist()) == list(range(data.n_users))
    assert [(lengths[u], u) for u in users.tolist()] == sorted((lengths[u], u) for u in range(data.n_users))
    targets = torch.cat([b.targets for b in eval_batches(seqs, split="valid", batch_size=10, max_len=3)])
    assert targets.tolist() == data.valid_targets()[users.numpy()].tolist()


@pytest.mark.parametrize("split", ["valid", "test"])
def test_eval_batches_cut_exactly_the_columns_of_padding(split):
    """Each batch is as wide as its longest input: one column narrower would cut an item, and
    batches of short histories are narrow."""
    data = make_data(5)
    seqs = DeviceSequences.from_data(data)
    widths = []
    for u, inputs, _, _ in eval_batches(seqs, split=split, batch_size=7, max_len=6):
        full = context_windows(seqs, u, split=split, max_len=6)
        width = inputs.shape[1]
        assert torch.equal(full[:, 6 - width:], inputs) and not full[:, :6 - width].any()
        assert (inputs[:, 0] != 0).any()  # the first column holds an item: nothing more to cut
        widths.append(width)
    assert min(widths) < 6 and widths == sorted(widths)
    with pytest.raises(ValueError):
        next(eval_batches(seqs, split="train", batch_size=4, max_len=3))


@pytest.mark.parametrize("device", DEVICES)
def test_full_context_is_every_interaction(device):
    """What a recommendation looks at: the whole sequence (and its history), not a split's part."""
    data = make_data(4)
    seqs = DeviceSequences.from_data(data, device)
    users = torch.tensor([3, 0, 20], device=device)
    windows = context_windows(seqs, users, split="full", max_len=5)
    assert windows.tolist() == [left_pad(seq(data, u), 5) for u in users.tolist()]
    rows, items = history(seqs, users, split="full")
    assert sorted(zip(rows.tolist(), items.tolist())) == sorted(
        (r, i) for r, u in enumerate(users.tolist()) for i in seq(data, u))
    with pytest.raises(ValueError):
        context_windows(seqs, users, split="train", max_len=5)
    with pytest.raises(ValueError):  # "full" has no target to evaluate against
        next(eval_batches(seqs, split="full", batch_size=4, max_len=3))
