"""k-core filter (fixed point and maximality against a slow reference), exact duplicates and CSR grouping."""

import numpy as np
import pytest

from core.data.filtering import compact, duplicates, kcore, time_order, to_csr


def reference_kcore(rows, min_user, min_item):
    """Slow pure-Python k-core: drop offending rows one sweep at a time until stable."""
    rows = list(rows)
    while True:
        users, items = {}, {}
        for u, i in rows:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        kept = [(u, i) for u, i in rows if users[u] >= min_user and items[i] >= min_item]
        if len(kept) == len(rows):
            return kept
        rows = kept


def random_log(seed, n=3000, n_users=300, n_items=200):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n).astype(np.int32)
    item = np.minimum(rng.zipf(1.5, n) - 1, n_items - 1).astype(np.int32)  # skewed: many rare items
    return user, item


@pytest.mark.parametrize("seed, min_user, min_item", [(0, 3, 3), (1, 5, 5), (2, 10, 2)])
def test_kcore_matches_reference_and_is_a_fixed_point(seed, min_user, min_item):
    user, item = random_log(seed)
    keep = kcore(user, item, min_user=min_user, min_item=min_item)
    expected = reference_kcore(zip(user.tolist(), item.tolist()), min_user, min_item)
    assert list(zip(user[keep].tolist(), item[keep].tolist())) == expected
    assert 0 < len(keep) < len(user)  # the case is not trivial
    u, i = user[keep], item[keep]
    assert np.bincount(u)[np.unique(u)].min() >= min_user
    assert np.bincount(i)[np.unique(i)].min() >= min_item
    again = kcore(u, i, min_user=min_user, min_item=min_item)
    assert np.array_equal(again, np.arange(len(u)))  # filtering the result removes nothing


def test_single_pass_is_one_sweep():
    user = np.array([0, 0, 0, 1, 1, 1, 2], dtype=np.int32)
    item = np.array([0, 1, 2, 0, 1, 3, 0], dtype=np.int32)
    one = kcore(user, item, min_user=3, min_item=2, iterative=False)
    assert one.tolist() == [0, 1, 3, 4]  # user 2 and items 2, 3 go; users 0, 1 fall to 2 items
    assert kcore(user, item, min_user=3, min_item=2).tolist() == []  # iterating empties it


def test_compact_keeps_order():
    codes, m = compact(np.array([7, 3, 7, 9]), 10)
    assert codes.tolist() == [1, 0, 1, 2] and m == 3


def test_time_order_is_stable_for_ties():
    user = np.array([1, 0, 1, 0, 1], dtype=np.int32)
    time = np.array([5, 9, 5, 1, 2], dtype=np.int64)
    assert time_order(user, time).tolist() == [3, 1, 4, 0, 2]  # ties (rows 0, 2) keep file order
    assert time_order(user, time.astype(np.float64)).tolist() == [3, 1, 4, 0, 2]  # lexsort path
    assert time_order(user, None).tolist() == [1, 3, 0, 2, 4]
    rng = np.random.default_rng(0)  # big enough that an unstable sort would reorder ties
    user, time = rng.integers(0, 5, 5000).astype(np.int32), rng.integers(0, 4, 5000)
    expected = sorted(range(5000), key=lambda r: (user[r], time[r]))  # Python's sort is stable
    assert time_order(user, time).tolist() == expected
    assert time_order(user, time.astype(np.float64)).tolist() == expected
    assert time_order(user, None).tolist() == sorted(range(5000), key=lambda r: user[r])


def test_to_csr_renumbers_from_one():
    user = np.array([4, 4, 4, 2, 2, 2], dtype=np.int32)
    item = np.array([8, 5, 8, 5, 6, 6], dtype=np.int32)
    time = np.array([3, 1, 2, 9, 8, 7])
    offsets, items, n_items, kept_users, kept_items = to_csr(user, item, time, n_users=5, n_items=9)
    assert offsets.tolist() == [0, 3, 6] and n_items == 3
    assert kept_users.tolist() == [2, 4] and kept_items.tolist() == [5, 6, 8]
    assert items.tolist() == [2, 2, 1, 1, 3, 3]  # user 2: times 7, 8, 9; user 4: times 1, 2, 3


@pytest.mark.parametrize("seed", range(4))
def test_duplicates_match_a_set_oracle(seed):
    """Later exact copies of (user, item, time) are marked, the first copy kept, in file order."""
    rng = np.random.default_rng(seed)
    n = 400
    user, item = rng.integers(0, 6, n).astype(np.int32), rng.integers(0, 5, n).astype(np.int32)
    time = rng.integers(0, 4, n) if seed % 2 else rng.integers(0, 4, n) / 2.0  # int and float times
    seen, expected = set(), []
    for row in zip(user.tolist(), item.tolist(), time.tolist()):
        expected.append(row in seen)
        seen.add(row)
    assert duplicates(user, item, time).tolist() == expected
    assert not duplicates(user, item, None).any()  # without time, repeats are interactions
