"""HDF5 sequence shards: the one on-disk format every later piece reads.

A prepared dataset is a folder::

    shard_00000.h5 ... shard_NNNNN.h5   users [user_start, user_end) each, CSR layout
    stats.json                          sizes and sequence-length statistics, for people

Each shard holds ``offsets`` (n_shard_users+1,) int64, local to the shard, and ``items``
(n_shard_interactions,) int32 with ids 1..n_items in time order (0 is padding and never
stored). Every shard carries the dataset attributes (format version, n_users, n_items,
filters, source hash, ...) plus its own user range and a write id shared by all shards of one
write, so that shards of two different writes can never be mixed silently.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

FORMAT_VERSION = 1
KIND = "sasrec-cce/sequence-shards"  # marks our files; anything else is foreign
MIN_SEQ_LEN = 3  # leave-one-out needs a training item, a validation and a test target
STATS_FILE = "stats.json"
_SHARD_GLOB = "shard_*.h5"
# Attributes of the dataset as a whole (the same in every shard); the rest are per shard.
_DATASET_ATTRS = ("kind", "format_version", "write_id", "n_users", "n_items", "n_interactions", "n_shards")


class DataFormatError(ValueError):
    """Bad input data or a stale/foreign prepared dataset; the message names the problem."""


@dataclass(frozen=True)
class SequenceData:
    """Every user's full time-ordered sequence in CSR form, with the leave-one-out split.

    ``items[offsets[u]:offsets[u+1]]`` is user u's sequence; the training sequence is
    ``seq[:-2]``, the validation target ``seq[-2]`` and the test target ``seq[-1]``.
    """

    offsets: np.ndarray  # (n_users+1,) int64
    items: np.ndarray  # (n_interactions,) int32, ids 1..n_items
    n_users: int
    n_items: int
    attrs: dict = field(default_factory=dict)

    def lengths(self) -> np.ndarray:
        """Full sequence length per user, (n_users,) int64."""
        return np.diff(self.offsets)

    def valid_targets(self) -> np.ndarray:
        """Second-to-last item per user, (n_users,) int64."""
        return self.items[self.offsets[1:] - 2].astype(np.int64)

    def test_targets(self) -> np.ndarray:
        """Last item per user, (n_users,) int64."""
        return self.items[self.offsets[1:] - 1].astype(np.int64)

    def train_item_user_counts(self) -> np.ndarray:
        """(n_items+1,) int64: distinct users having each item in their TRAIN sequence."""
        lengths = self.lengths()
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), lengths)
        pos = np.arange(len(self.items), dtype=np.int64) - np.repeat(self.offsets[:-1], lengths)
        in_train = pos < np.repeat(lengths - 2, lengths)
        keys = users[in_train] * (self.n_items + 1) + self.items[in_train]
        keys.sort()  # a plain sort: far faster than np.unique on tens of millions of keys
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        distinct_items = keys[first] % (self.n_items + 1)
        return np.bincount(distinct_items, minlength=self.n_items + 1).astype(np.int64)


def sequence_stats(offsets: np.ndarray, n_items: int) -> dict:
    """Sizes and sequence-length statistics of a CSR dataset, as written to stats.json."""
    lengths = np.diff(offsets)
    n_users = len(lengths)
    pct = np.percentile(lengths, [50, 90, 99]) if n_users else [0, 0, 0]
    return {
        "n_users": int(n_users),
        "n_items": int(n_items),
        "n_interactions": int(offsets[-1]),
        "n_train_interactions": int(offsets[-1] - 2 * n_users),
        "density": float(offsets[-1] / max(1, n_users * n_items)),
        "length": {
            "min": int(lengths.min()) if n_users else 0,
            "median": float(pct[0]),
            "mean": float(lengths.mean()) if n_users else 0.0,
            "p90": float(pct[1]),
            "p99": float(pct[2]),
            "max": int(lengths.max()) if n_users else 0,
        },
    }


def _check_csr(offsets: np.ndarray, items: np.ndarray, n_items: int, where: str) -> None:
    """Raises DataFormatError unless offsets/items form a valid leave-one-out CSR."""
    if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(items):
        raise DataFormatError(f"{where}: offsets do not describe the items array")
    lengths = np.diff(offsets)
    if (lengths < MIN_SEQ_LEN).any():
        raise DataFormatError(f"{where}: a user has fewer than {MIN_SEQ_LEN} items (min length {lengths.min()})")
    if len(items) and (items.min() < 1 or items.max() > n_items):
        raise DataFormatError(f"{where}: item ids outside 1..{n_items}")


def _attr_value(value):
    """HDF5 attributes take numbers and strings; nested values are stored as JSON."""
    if isinstance(value, (dict, list, tuple, bool)) or value is None:
        return "json:" + json.dumps(value)
    return value


def _from_attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_shards(
    out_dir: str | os.PathLike,
    *,
    offsets: np.ndarray,
    items: np.ndarray,
    n_items: int,
    attrs: dict,
    users_per_shard: int = 50_000,
    progress: bool = False,
) -> Path:
    """Writes a CSR dataset as HDF5 shards plus stats.json into a NEW folder ``out_dir``.

    Atomic: everything is written to a temporary sibling folder that is renamed at the end,
    so a crash or an error never leaves a half-written dataset. ``attrs`` (filters, source,
    source_hash, ...) are stored in every shard. Raises FileExistsError if out_dir exists.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"output directory already exists: {out_dir}")
    offsets = np.asarray(offsets, dtype=np.int64)
    items = np.asarray(items, dtype=np.int32)
    _check_csr(offsets, items, n_items, "write_shards")
    n_users = len(offsets) - 1
    bounds = list(range(0, n_users, users_per_shard)) + [n_users]
    dataset_attrs = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "write_id": uuid.uuid4().hex,
        "n_users": n_users,
        "n_items": int(n_items),
        "n_interactions": int(offsets[-1]),
        "n_shards": len(bounds) - 1,
    }
    clash = set(attrs) & set(dataset_attrs)
    if clash:
        raise ValueError(f"attrs may not override {sorted(clash)}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for shard, (lo, hi) in enumerate(
            tqdm(list(zip(bounds[:-1], bounds[1:])), desc="writing shards", disable=not progress)
        ):
            with h5py.File(tmp / f"shard_{shard:05d}.h5", "w") as f:
                f.create_dataset("offsets", data=offsets[lo : hi + 1] - offsets[lo])
                f.create_dataset("items", data=items[offsets[lo] : offsets[hi]])
                for key, value in {**attrs, **dataset_attrs}.items():
                    f.attrs[key] = _attr_value(value)
                f.attrs["shard"] = shard
                f.attrs["user_start"] = lo
                f.attrs["user_end"] = hi
        stats = {**sequence_stats(offsets, n_items), "format_version": FORMAT_VERSION, **attrs}
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        os.rename(tmp, out_dir)  # atomic on one filesystem; fails if out_dir appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _read_shard(path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    try:
        with h5py.File(path, "r") as f:
            attrs = {key: _from_attr(value) for key, value in f.attrs.items()}
            if attrs.get("kind") != KIND:
                raise DataFormatError(f"{path}: not a sasrec-cce sequence shard (foreign HDF5 file)")
            if attrs.get("format_version") != FORMAT_VERSION:
                raise DataFormatError(
                    f"{path}: stale format version {attrs.get('format_version')} (this code reads "
                    f"{FORMAT_VERSION}); prepare the dataset again with tools/prepare_data.py"
                )
            if "offsets" not in f or "items" not in f:
                raise DataFormatError(f"{path}: shard lacks its offsets/items arrays")
            return attrs, f["offsets"][()], f["items"][()]
    except OSError as err:  # h5py's error for a file that is not HDF5 or is truncated
        raise DataFormatError(f"{path}: cannot read as HDF5 ({err})") from None


def load_sequences(path: str | os.PathLike) -> SequenceData:
    """Reads and validates a dataset folder written by ``write_shards``.

    Raises DataFormatError with a clear message on a missing folder, a foreign or stale file,
    missing or mixed shards, or inconsistent arrays.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataFormatError(f"no prepared dataset at {path} (run tools/prepare_data.py first)")
    files = sorted(path.glob(_SHARD_GLOB))
    if not files:
        raise DataFormatError(f"{path}: no {_SHARD_GLOB} files; not a prepared dataset")
    shards = [_read_shard(f) for f in files]
    first = shards[0][0]
    if len(files) != first["n_shards"]:
        raise DataFormatError(f"{path}: found {len(files)} shards, the dataset has {first['n_shards']}")
    offsets_parts, items_parts, next_user = [np.zeros(1, np.int64)], [], 0
    for file, (attrs, offsets, items) in zip(files, shards):
        if any(attrs.get(k) != first[k] for k in _DATASET_ATTRS):
            raise DataFormatError(f"{file}: shard belongs to a different write than {files[0].name}")
        if attrs["user_start"] != next_user or len(offsets) != attrs["user_end"] - attrs["user_start"] + 1:
            raise DataFormatError(f"{file}: user range does not continue the previous shard")
        _check_csr(offsets.astype(np.int64), items, first["n_items"], str(file))
        offsets_parts.append(offsets[1:].astype(np.int64) + offsets_parts[-1][-1])
        items_parts.append(items.astype(np.int32, copy=False))
        next_user = attrs["user_end"]
    offsets = np.concatenate(offsets_parts)
    if next_user != first["n_users"] or offsets[-1] != first["n_interactions"]:
        raise DataFormatError(f"{path}: shards hold {next_user} users / {offsets[-1]} items, attributes say otherwise")
    per_shard = ("shard", "user_start", "user_end")
    attrs = {k: v for k, v in first.items() if k not in per_shard}
    return SequenceData(
        offsets=offsets,
        items=np.concatenate(items_parts),
        n_users=int(first["n_users"]),
        n_items=int(first["n_items"]),
        attrs=attrs,
    )
