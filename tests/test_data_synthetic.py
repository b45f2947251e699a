"""Synthetic logs: valid shape, reproducible, no repeats, and a signal that beats popularity."""

import numpy as np
import pytest

from core.data.shards import load_sequences
from core.data.synthetic import PRESETS, generate, write_synthetic

SMALL = dict(n_users=3000, n_items=400, mean_len=15.0, len_spread=0.7, zipf=0.9, signal=0.6)


def test_shape_and_reproducibility():
    offsets, items = generate(**SMALL, seed=3)
    lengths = np.diff(offsets)
    assert len(offsets) == 3001 and offsets[0] == 0 and offsets[-1] == len(items)
    assert lengths.min() >= 3 and 8 < lengths.mean() < 20
    assert items.min() >= 1 and items.max() <= 400 and items.dtype == np.int32
    again = generate(**SMALL, seed=3)
    assert np.array_equal(again[1], items)
    assert not np.array_equal(generate(**SMALL, seed=4)[1][:100], items[:100])


def test_no_repeats_within_a_user():
    offsets, items = generate(**{**SMALL, "n_items": 20, "mean_len": 8.0}, seed=0)  # tiny catalog: many clashes
    users = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    pairs = users * 100 + items
    assert len(np.unique(pairs)) == len(pairs)
    assert np.diff(offsets).min() >= 3


def hit_rates(offsets, items, n_items):
    """Test-target hit rate @10 of popularity vs "most frequent successor of the last item"."""
    first, last = offsets[:-1], offsets[1:]
    train = np.concatenate([items[a : b - 2] for a, b in zip(first, last)])
    pairs = np.concatenate([np.stack([items[a : b - 3], items[a + 1 : b - 2]], 1) for a, b in zip(first, last)])
    popular_top = np.argsort(-np.bincount(train, minlength=n_items + 1))[:10]
    follow = np.zeros((n_items + 1, n_items + 1))
    np.add.at(follow, (pairs[:, 0], pairs[:, 1]), 1)
    follow += np.bincount(train, minlength=n_items + 1) * 1e-6  # ties broken by popularity
    prev, target = items[last - 2], items[last - 1]
    seq_top = np.argsort(-follow[prev], axis=1)[:, :10]
    return np.isin(target, popular_top).mean(), (seq_top == target[:, None]).any(1).mean()


def test_sequential_signal_beats_popularity():
    pop, seq = hit_rates(*generate(**SMALL, seed=1), 400)
    assert seq > pop + 0.15
    pop0, seq0 = hit_rates(*generate(**{**SMALL, "signal": 0.0}, seed=1), 400)
    assert seq0 < pop0 + 0.05  # without the signal there is nothing to learn


def test_presets_and_write(tmp_path):
    assert {"tiny", "ml20m-like", "beauty-like", "items-1m", "items-4m", "items-10m"} <= set(PRESETS)
    assert PRESETS["items-10m"]["n_items"] == 10_000_000
    data = load_sequences(write_synthetic(tmp_path / "t", preset="tiny", seed=0, n_users=500))
    assert data.n_users == 500 and data.n_items == PRESETS["tiny"]["n_items"]
    assert data.attrs["synthetic"]["seed"] == 0 and data.attrs["source"] == "synthetic:tiny"
    with pytest.raises(ValueError, match="unknown preset"):
        write_synthetic(tmp_path / "x", preset="huge")
    assert not (tmp_path / "x").exists()
