"""Filtering, renumbering and grouping of interaction logs; numpy (and a pandas hash), no per-row Python.

``duplicates`` marks exact copies of an earlier (user, item, time) row. ``kcore`` keeps users
with >= min_user and items with >= min_item interactions, repeated until nothing changes (the
k-core: the unique largest subset where every count holds). ``to_csr``
renumbers the survivors (users 0..n-1, items 1..n, 0 = padding) and sorts each user's
interactions by time with a stable sort, so that ties keep file order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def duplicates(user: np.ndarray, item: np.ndarray, time: np.ndarray | None) -> np.ndarray:
    """(n,) bool: rows repeating an earlier row's exact (user, item, time); the first copy is kept.

    Without timestamps (file order is time) a repeated (user, item) is a repeat interaction,
    not a copy, so nothing is marked. Only rows whose (user, item) pair repeats (found by
    hashing, linear time) are sorted, so a log without repeats costs one hash pass.
    """
    dup = np.zeros(len(user), dtype=bool)
    if time is None or len(user) < 2:
        return dup
    pair = user.astype(np.int64) * (int(item.max()) + 1) + item  # (n,) one code per (user, item)
    maybe = np.flatnonzero(pd.Series(pair).duplicated(keep=False).to_numpy())  # ascending: file order
    order = maybe[np.lexsort((time[maybe], pair[maybe]))]  # stable: the first copy comes first
    p, t = pair[order], time[order]
    dup[order[1:]] = (p[1:] == p[:-1]) & (t[1:] == t[:-1])
    return dup


def kcore(
    user: np.ndarray,
    item: np.ndarray,
    *,
    min_user: int,
    min_item: int,
    iterative: bool = True,
    n_users: int | None = None,
    n_items: int | None = None,
) -> np.ndarray:
    """Indices (int64, ascending) of the rows that survive the count filter.

    ``user``/``item`` are codes 0..n-1. With ``iterative=False`` one pass drops rows whose user
    or item is below its threshold on the unfiltered counts (the result may violate them).
    """
    n_users = int(user.max()) + 1 if n_users is None else n_users
    n_items = int(item.max()) + 1 if n_items is None else n_items
    keep = np.arange(len(user), dtype=np.int64)
    u, i = user, item
    while len(keep):
        user_ok = np.bincount(u, minlength=n_users) >= min_user  # (n_users,)
        item_ok = np.bincount(i, minlength=n_items) >= min_item  # (n_items,)
        ok = user_ok[u] & item_ok[i]
        if ok.all():
            break
        keep, u, i = keep[ok], u[ok], i[ok]
        if not iterative:
            break
    return keep


def compact(codes: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Renumbers codes to 0..m-1 keeping their order; returns (new codes int32, m)."""
    present = np.bincount(codes, minlength=size) > 0
    new_code = np.cumsum(present) - 1  # (size,)
    return new_code[codes].astype(np.int32), int(present.sum())


def time_order(user: np.ndarray, time: np.ndarray | None) -> np.ndarray:
    """Permutation grouping rows by user, by time within a user, ties in file order."""
    if time is None:
        return np.argsort(user, kind="stable")
    if np.issubdtype(time.dtype, np.integer) and len(time):
        # One int64 key (user, time) sorts faster than lexsort's two passes when it fits.
        span = int(time.max()) - int(time.min()) + 1
        if span * (int(user.max()) + 1) < 2**62:
            key = user.astype(np.int64) * span + (time - time.min())
            return np.argsort(key, kind="stable")
    return np.lexsort((time, user))  # lexsort is stable: equal keys keep file order


def to_csr(
    user: np.ndarray, item: np.ndarray, time: np.ndarray | None, *, n_users: int, n_items: int
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """Renumbers and groups surviving rows into CSR.

    Returns (offsets (n_users'+1,) int64, items (n,) int32 in 1..n_items', n_items',
    kept user codes, kept item codes), the last two mapping new ids back to input codes
    (new item id k is input code ``kept_items[k-1]``).
    """
    user_new, n_users_new = compact(user, n_users)
    item_new, n_items_new = compact(item, n_items)
    order = time_order(user_new, time)
    items = item_new[order] + 1  # (n,) 1..n_items', 0 stays padding
    offsets = np.zeros(n_users_new + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_new, minlength=n_users_new), out=offsets[1:])
    kept_users = np.flatnonzero(np.bincount(user, minlength=n_users))
    kept_items = np.flatnonzero(np.bincount(item, minlength=n_items))
    return offsets, items.astype(np.int32), n_items_new, kept_users, kept_items
