"""Synthetic interaction logs at any scale, with a sequential signal a model can learn.

The process: items have Zipf-like popularity (a continuous power law x^-zipf over popularity
ranks, the ranks assigned to a random permutation of the ids) and each item has
``n_successors`` "next items" drawn from that popularity. A user's first item is a
popularity draw; each next item is, with probability ``signal``, a uniformly chosen successor of
the current item, else a fresh popularity draw. A model that reads the last item therefore
beats popularity by about ``signal``. As in MovieLens, a user meets an item at most once:
repeats are removed (so sequences come out somewhat shorter than ``mean_len`` when the catalog
is small or Zipf steep; ``stats.json`` records the real figures).

Everything is vectorized over interactions: a successor chain is advanced for all chains at
once, one step per loop iteration (about log(N)/log(1/signal) iterations).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from core.data.shards import MIN_SEQ_LEN, write_shards

PRESETS = {
    # ~2,000 users, 500 items: tests and a one-minute CPU quickstart.
    "tiny": dict(n_users=2_000, n_items=500, mean_len=25.0, len_spread=0.6, zipf=0.9, signal=0.6),
    # MovieLens-20M's size: 138,493 users, 20,729 items, ~20M interactions, long sequences.
    "ml20m-like": dict(n_users=138_493, n_items=20_729, mean_len=156.0, len_spread=1.0, zipf=0.7, signal=0.5),
    # Amazon Beauty's size as the seed states it: many users, short sequences.
    "beauty-like": dict(n_users=729_576, n_items=207_649, mean_len=5.0, len_spread=0.8, zipf=0.9, signal=0.5),
    # Catalog scaling for the loss benchmarks: same users and lengths, growing catalog.
    "items-1m": dict(n_users=500_000, n_items=1_000_000, mean_len=20.0, len_spread=0.8, zipf=0.8, signal=0.5),
    "items-4m": dict(n_users=500_000, n_items=4_000_000, mean_len=20.0, len_spread=0.8, zipf=0.8, signal=0.5),
    "items-10m": dict(n_users=500_000, n_items=10_000_000, mean_len=20.0, len_spread=0.8, zipf=0.8, signal=0.5),
}
GENERATE_PARAMS = ("n_users", "n_items", "mean_len", "len_spread", "zipf", "signal")


def _lengths(rng: np.random.Generator, n_users: int, n_items: int, mean_len: float, len_spread: float) -> np.ndarray:
    """MIN_SEQ_LEN + lognormal(sigma=len_spread) with mean ``mean_len``, capped at half the catalog."""
    extra_mean = max(mean_len - MIN_SEQ_LEN, 1e-3)
    mu = np.log(extra_mean) - len_spread**2 / 2  # lognormal mean is exp(mu + sigma^2 / 2)
    lengths = MIN_SEQ_LEN + np.rint(rng.lognormal(mu, len_spread, n_users)).astype(np.int64)
    return np.minimum(lengths, max(MIN_SEQ_LEN, n_items // 2))


def _hash_uniform(key: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: uint64 keys -> uniforms in [0, 1), the same for the same key."""
    with np.errstate(over="ignore"):
        x = key ^ (key >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _distinct_rows(rng: np.random.Generator, rows: np.ndarray, draw) -> np.ndarray:
    """Fills the -1 slots of (k, m) ``rows`` with draws, redrawing until each row is distinct."""
    out = rows.copy()
    todo = np.arange(len(rows))
    while len(todo):
        sub = rows[todo]
        empty = sub < 0
        sub[empty] = draw(int(empty.sum()))
        ordered = np.sort(sub, axis=1)
        clash = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        out[todo[~clash]] = sub[~clash]
        todo = todo[clash]
    return out


def generate(
    *,
    n_users: int,
    n_items: int,
    mean_len: float,
    len_spread: float,
    zipf: float,
    signal: float,
    seed: int,
    n_successors: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (offsets (n_users+1,) int64, items (n,) int32 in 1..n_items); every user >= 3 items.

    Lengths are 3 + lognormal with mean ``mean_len`` (before repeats are removed) and log-scale
    sigma ``len_spread``, capped at half the catalog; ``zipf`` is the popularity exponent;
    ``signal`` the probability that the next item is a successor of the current one.
    """
    if n_items < 2 * MIN_SEQ_LEN or n_users < 1 or not 0 <= signal < 1:
        raise ValueError("need n_items >= 6, n_users >= 1 and 0 <= signal < 1")
    rng = np.random.default_rng(seed)
    rank_to_item = (rng.permutation(n_items) + 1).astype(np.int32)  # popularity rank -> item id
    salt = np.uint64(rng.integers(0, 2**63))

    def popular(u: np.ndarray) -> np.ndarray:
        """Uniforms -> item ids by inverting a continuous power law x^-zipf on [1, n_items+1)."""
        if abs(zipf - 1.0) < 1e-9:
            x = np.exp(u * np.log(n_items + 1.0))
        else:
            a = 1.0 - zipf
            x = (1.0 + u * ((n_items + 1.0) ** a - 1.0)) ** (1.0 / a)
        return rank_to_item[np.clip(x.astype(np.int64) - 1, 0, n_items - 1)]

    def draw(k: int) -> np.ndarray:
        return popular(rng.random(k))

    def successor(item: np.ndarray, slot: np.ndarray) -> np.ndarray:
        """The ``slot``-th successor of ``item``: a popularity draw from a hash, so no table is kept."""
        return popular(_hash_uniform(item.astype(np.uint64) * np.uint64(n_successors) + slot.astype(np.uint64) + salt))

    # Raw walk over all users' positions at once.
    lengths = _lengths(rng, n_users, n_items, mean_len, len_spread)
    total = int(lengths.sum())
    starts = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    fresh = rng.random(total) >= signal  # (total,) True: a popularity draw, not a successor
    fresh[starts[:-1]] = True
    items = np.zeros(total, dtype=np.int32)
    pos = np.flatnonzero(fresh)
    items[pos] = draw(len(pos))
    while len(pos):  # advance every successor chain by one step
        pos = pos + 1
        pos = pos[pos < total]
        pos = pos[~fresh[pos]]
        items[pos] = successor(items[pos - 1], rng.integers(0, n_successors, len(pos)))

    # Drop repeats within a user (keep the first occurrence): one stable sort on (user, item).
    users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    order = np.argsort(users * (n_items + 1) + items, kind="stable")
    repeat = np.zeros(total, dtype=bool)
    sorted_items, sorted_users = items[order], users[order]
    repeat[order[1:]] = (sorted_items[1:] == sorted_items[:-1]) & (sorted_users[1:] == sorted_users[:-1])
    del order, sorted_items, sorted_users
    keep = ~repeat
    items, users = items[keep], users[keep]
    kept_len = np.bincount(users, minlength=n_users)

    # Users left with fewer than MIN_SEQ_LEN items get fresh distinct items appended.
    out_len = np.maximum(kept_len, MIN_SEQ_LEN)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(out_len, out=offsets[1:])
    out = np.zeros(int(offsets[-1]), dtype=np.int32)
    kept_starts = np.concatenate([[0], np.cumsum(kept_len)])
    out[offsets[users] + np.arange(len(items)) - kept_starts[users]] = items
    short = np.flatnonzero(kept_len < MIN_SEQ_LEN)
    if len(short):
        slots = offsets[short, None] + np.arange(MIN_SEQ_LEN)  # (k, MIN_SEQ_LEN)
        rows = np.where(np.arange(MIN_SEQ_LEN) < kept_len[short, None], out[slots], -1)
        out[slots] = _distinct_rows(rng, rows, draw)
    return offsets, out


def resolve_params(preset: str | None, overrides: dict) -> dict:
    """A preset's parameters updated by ``overrides``; all of GENERATE_PARAMS must end up set."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    params = {**(PRESETS[preset] if preset else {}), **overrides}
    missing = [p for p in GENERATE_PARAMS if p not in params]
    unknown = [p for p in params if p not in (*GENERATE_PARAMS, "n_successors")]
    if missing or unknown:
        raise ValueError(f"synthetic parameters: missing {missing}, unknown {unknown}")
    return params


def write_synthetic(out_dir: str | os.PathLike, *, preset: str | None = None, seed: int = 0, **overrides) -> Path:
    """Generates a synthetic log (a preset, optionally overridden) and writes it as shards.

    ``n_items`` in the written dataset is the configured catalog size, items never drawn
    included, so catalog-scaling presets keep their nominal catalog.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"output directory already exists: {out_dir}")
    params = resolve_params(preset, overrides)
    offsets, items = generate(**params, seed=seed)
    recipe = {"preset": preset, "seed": seed, **params}
    attrs = {
        "source": f"synthetic:{preset or 'custom'}",
        "source_hash": "sha256:" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest(),
        "synthetic": recipe,
        "filters": None,
        "time_order": "generated order",
    }
    return write_shards(out_dir, offsets=offsets, items=items, n_items=params["n_items"], attrs=attrs)
