"""HDF5 sequence shards: the one on-disk format every later piece reads.

A prepared dataset (format version 2) is a folder::

    shard_00000.h5 ... shard_NNNNN.h5   users [user_start, user_end) each, CSR layout
    item_ids.h5                         the catalog's raw item ids
    stats.json                          sizes and sequence-length statistics, for people
    manifest.sealed                     every other file's SHA-256, sealed (``core.integrity``)

Each shard holds, for its users only:

- ``offsets`` (n_shard_users+1,) int64, local to the shard;
- ``items`` (n_shard_interactions,) int32, ids 1..n_items in time order (0 is padding, never stored);
- ``user_ids`` (n_shard_users,): the raw id of each of its users.

``item_ids.h5`` holds ``item_ids`` (n_items+1,): the raw id of internal item i at index i; index
0 is the padding slot (0 or ""), never a catalog item. So internal user u <-> ``user_ids[u]``
and internal item i <-> ``item_ids[i]`` (``SequenceData`` has both, concatenated over shards).

Raw ids are stored as read: int64 (on disk int32 where they fit) when every raw id of the
column is an integer that fits in int64 (MovieLens, numeric columns, synthetic data), else as
strings (UTF-8, fixed-length bytes on disk, numpy ``str`` arrays in memory). Both round-trip.

Integrity (format 3): the manifest holds the SHA-256 of every file of the folder and is itself
sealed (``core.integrity.write_manifest``); ``load_sequences`` checks every digest before HDF5 parses any
file. Hashing only reads bytes, so a corrupted file is refused with one line naming it and the
rebuild command, never parsed: a flipped byte in an attribute, an id map or the data cannot hang
the HDF5 library, raise its errors or change a value silently. (fletcher32 on every dataset and
the write id shared by the files of one write remain, as a second line of defence.) Every file
carries the dataset attributes (format version, n_users, n_items, filters, source hash, ...).
Folders are written atomically (``core.atomic.atomic_dir``); the HDF5 files are built in memory
and written with plain file writes, so a full disk is one ``DataWriteError``, never an HDF5
crash.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from core.atomic import atomic_dir, write_bytes, write_json
from core.integrity import CorruptFile, check_file, read_manifest, sha256_file, write_manifest

FORMAT_VERSION = 3  # 2: raw user/item ids, fletcher32 checksums; 3: a sealed manifest of every file's SHA-256
KIND = "sasrec-cce/sequence-shards"  # marks our files; anything else is foreign
MIN_SEQ_LEN = 3  # leave-one-out needs a training item, a validation and a test target
STATS_FILE = "stats.json"
ITEM_IDS_FILE = "item_ids.h5"
MANIFEST_FILE = "manifest.sealed"
_SHARD_GLOB = "shard_*.h5"
_CHUNK = 1 << 20  # elements per HDF5 chunk: each chunk carries its own checksum
# Attributes of the dataset as a whole (the same in every file); the rest are per shard.
_DATASET_ATTRS = ("kind", "format_version", "write_id", "n_users", "n_items", "n_interactions", "n_shards")


class DataFormatError(ValueError):
    """Bad input data or a stale/foreign/corrupted prepared dataset; the message names the problem."""


class DataWriteError(DataFormatError):
    """A prepared folder could not be written (full disk, no permission); nothing was left behind.
    A DataFormatError so that every command already prints it as its one error line."""


def raw_ids(values) -> np.ndarray:
    """Raw ids as stored: int64 if every value is an integer that fits in int64, else ``str``.

    ``values`` is what a reader found (a numpy array or pandas Index of ints, strings, floats or
    Python objects); floats and anything else become their ``str`` (e.g. ``"1.5"``).
    """
    arr = np.asarray(values)
    if arr.dtype.kind == "i":
        return arr.astype(np.int64)
    if arr.dtype.kind == "u" and (len(arr) == 0 or arr.max() <= np.iinfo(np.int64).max):
        return arr.astype(np.int64)
    if arr.dtype.kind == "O" and all(type(v) is int and -(2**63) <= v < 2**63 for v in arr):
        return arr.astype(np.int64)
    if arr.dtype.kind == "U":
        return arr
    return np.array([str(v) for v in arr.tolist()], dtype=str)


def _padded(ids: np.ndarray) -> np.ndarray:
    """``ids`` with the padding slot (0 or "") in front: index i is then internal item i."""
    pad = np.zeros(1, dtype=np.int64) if ids.dtype.kind == "i" else np.array([""])
    return np.concatenate([pad, ids])


@dataclass(frozen=True)
class SequenceData:
    """Every user's full time-ordered sequence in CSR form, with the leave-one-out split.

    ``items[offsets[u]:offsets[u+1]]`` is user u's sequence; the training sequence is
    ``seq[:-2]``, the validation target ``seq[-2]`` and the test target ``seq[-1]``.
    Raw ids: internal user u is ``user_ids[u]``, internal item i is ``item_ids[i]``
    (``item_ids[0]`` is the padding slot). Left out, they default to the internal ids.
    """

    offsets: np.ndarray  # (n_users+1,) int64
    items: np.ndarray  # (n_interactions,) int32, ids 1..n_items
    n_users: int
    n_items: int
    attrs: dict = field(default_factory=dict)
    user_ids: np.ndarray | None = None  # (n_users,) int64 or str
    item_ids: np.ndarray | None = None  # (n_items+1,) int64 or str, [0] = padding

    def __post_init__(self):
        """Refuses (DataFormatError) what training would fail on later: a CSR that is not a
        leave-one-out split of ``n_users`` users over item ids 1..``n_items``."""
        _check_csr(np.asarray(self.offsets), np.asarray(self.items), self.n_items, "SequenceData")
        if len(self.offsets) - 1 != self.n_users:
            raise DataFormatError(f"SequenceData: offsets describe {len(self.offsets) - 1} users, "
                                  f"n_users is {self.n_users}")
        if self.user_ids is None:
            object.__setattr__(self, "user_ids", np.arange(self.n_users, dtype=np.int64))
        if self.item_ids is None:
            object.__setattr__(self, "item_ids", np.arange(self.n_items + 1, dtype=np.int64))
        if len(self.user_ids) != self.n_users or len(self.item_ids) != self.n_items + 1:
            raise DataFormatError(
                f"raw ids: {len(self.user_ids)} user ids for {self.n_users} users, "
                f"{len(self.item_ids)} item ids for {self.n_items} items + padding"
            )

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
        raise DataFormatError(f"{where}: item ids outside 1..{n_items} "
                              f"(found {items.min()}..{items.max()})")


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


def _put(f: h5py.File, name: str, data: np.ndarray) -> None:
    """One checksummed dataset; raw ids narrowed to int32 or UTF-8 bytes on disk."""
    if data.dtype.kind == "U":
        data = np.char.encode(data, "utf-8")
        if data.dtype.itemsize == 0:
            data = data.astype("S1")
    elif name.endswith("_ids") and len(data) and -(2**31) <= data.min() and data.max() < 2**31:
        data = data.astype(np.int32)  # loaded back as int64
    f.create_dataset(name, data=data, chunks=(max(1, min(len(data), _CHUNK)),), fletcher32=True)


def _get(f: h5py.File, path: Path, name: str, rebuild: str) -> np.ndarray:
    """Reads one dataset, verifying its checksum: a corrupted chunk becomes one clear line."""
    if name not in f:
        raise DataFormatError(f"{path}: lacks its {name!r} array; {rebuild}")
    dset = f[name]
    if not dset.fletcher32:
        raise DataFormatError(f"{path}: {name!r} carries no checksum (not written by this code); {rebuild}")
    try:
        data = dset[()]
    except OSError:  # HDF5's "filter returned failure during read": fletcher32 mismatch
        raise DataFormatError(f"{path}: checksum mismatch in {name!r}: the file is corrupted; {rebuild}") from None
    if data.dtype.kind == "S":
        return np.char.decode(data, "utf-8")
    return data.astype(np.int64) if name.endswith("_ids") else data


def rebuild_command(attrs: dict, folder: Path) -> str:
    """``rebuild it: rm -r FOLDER && python tools/prepare_data.py ...`` from a dataset's attributes."""
    source = str(attrs.get("source", ""))
    fmt, _, raw_name = source.partition(":")
    if fmt == "synthetic":
        recipe = attrs.get("synthetic") or {}
        args = f"--format synthetic --preset {recipe.get('preset') or 'PRESET'} --seed {recipe.get('seed', 0)}"
    else:
        raw = attrs.get("raw_path") or f"PATH/TO/{raw_name or 'RAW_FILE'}"
        args = f"--format {fmt or 'FORMAT'} --raw {raw}"
        filters = attrs.get("filters") or {}
        for key, flag in (("min_user", "--min-user"), ("min_item", "--min-item")):
            if filters.get(key, 3) != 3:
                args += f" {flag} {filters[key]}"
        if filters.get("iterative") is False:
            args += " --single-pass"
        if fmt == "generic":
            columns = attrs.get("columns")
            args += " --columns " + (",".join(f"{k}={v}" for k, v in columns.items()) if columns else "MAPPING")
        if (attrs.get("duplicates") or {}).get("dropped") is False:
            args += " --keep-duplicates"
    return f"rebuild it: rm -r {folder} && python tools/prepare_data.py {args} --out {folder}"


def write_shards(
    out_dir: str | os.PathLike,
    *,
    offsets: np.ndarray,
    items: np.ndarray,
    n_items: int,
    attrs: dict,
    user_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
    users_per_shard: int = 50_000,
    progress: bool = False,
) -> Path:
    """Writes a CSR dataset as HDF5 shards, item_ids.h5, stats.json and the sealed manifest of
    their digests into a NEW folder ``out_dir``.

    ``user_ids`` (n_users,) and ``item_ids`` (n_items,) are the raw ids of the internal users
    0.. and items 1.. (see ``raw_ids``); left out, the internal ids themselves are stored.
    Atomic (``atomic_dir``): a crash or an error never leaves a half-written dataset. ``attrs``
    (filters, source, source_hash, ...) are stored in every file. Raises FileExistsError if
    out_dir exists and DataWriteError if it cannot be written (a full disk).
    """
    out_dir = Path(out_dir)
    offsets = np.asarray(offsets, dtype=np.int64)
    items = np.asarray(items, dtype=np.int32)
    _check_csr(offsets, items, n_items, "write_shards")
    n_users = len(offsets) - 1
    user_ids = np.arange(n_users, dtype=np.int64) if user_ids is None else raw_ids(user_ids)
    item_ids = np.arange(n_items + 1, dtype=np.int64) if item_ids is None else _padded(raw_ids(item_ids))
    if len(user_ids) != n_users or len(item_ids) != n_items + 1:
        raise ValueError(f"write_shards: {len(user_ids)} user ids for {n_users} users, "
                         f"{len(item_ids) - 1} item ids for {n_items} items")
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
    file_attrs = {key: _attr_value(value) for key, value in {**attrs, **dataset_attrs}.items()}

    try:
        with atomic_dir(out_dir) as tmp:
            for shard, (lo, hi) in enumerate(
                tqdm(list(zip(bounds[:-1], bounds[1:])), desc="writing shards", disable=not progress)
            ):
                arrays = {"offsets": offsets[lo : hi + 1] - offsets[lo], "items": items[offsets[lo] : offsets[hi]],
                          "user_ids": user_ids[lo:hi]}
                shard_attrs = {**file_attrs, "shard": shard, "user_start": lo, "user_end": hi}
                write_bytes(_h5_bytes(arrays, shard_attrs), tmp / f"shard_{shard:05d}.h5")
            write_bytes(_h5_bytes({"item_ids": item_ids}, file_attrs), tmp / ITEM_IDS_FILE)
            stats = {**sequence_stats(offsets, n_items), "format_version": FORMAT_VERSION, **attrs}
            write_json(stats, tmp / STATS_FILE)
            _write_manifest(tmp, dataset_attrs["write_id"], attrs)
    except FileExistsError:
        raise
    except OSError as err:  # a full disk, a read-only folder: atomic_dir left nothing behind
        raise DataWriteError(f"cannot write {out_dir}: {err.strerror or err} (nothing was written)") from None
    return out_dir


def _h5_bytes(arrays: dict[str, np.ndarray], attrs: dict) -> bytes:
    """An HDF5 file built in memory: HDF5 never writes to disk itself (on a full disk it printed
    dozens of errors and then crashed the interpreter), a plain Python write does."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        for name, data in arrays.items():
            _put(f, name, data)
        f.attrs.update(attrs)
    return buffer.getvalue()


def _write_manifest(folder: Path, write_id: str, attrs: dict) -> None:
    """Seals the SHA-256 of every file in ``folder`` (and the attributes a rebuild command needs)."""
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir())}
    write_manifest({"format_version": FORMAT_VERSION, "write_id": write_id, "files": files, "attrs": attrs},
                   folder / MANIFEST_FILE)


def _unverified_stats(folder: Path) -> dict:
    """stats.json as it parses, unverified: only for the rebuild command of a folder that cannot
    be verified (it holds the same attributes as the files)."""
    try:
        stats = json.loads((folder / STATS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return stats if isinstance(stats, dict) else {}


def _best_rebuild_command(stats: dict, folder: Path) -> str:
    try:
        return rebuild_command(stats, folder)
    except (AttributeError, TypeError):  # a stats.json of unexpected shape
        return rebuild_command({}, folder)


def verify_folder(path: Path) -> dict:
    """Checks every file of a prepared folder against its sealed manifest; returns the manifest.

    Runs before any file is parsed: hashing reads bytes in blocks and parses nothing, so a
    corrupted file costs one read and one line, never a hang or an HDF5 error. Every load
    hashes every file again (about a second per GB; nothing is cached, so nothing can be
    trusted that changed since). Refused, with the rebuild command: a corrupted manifest or
    file, a listed file missing, and an ``.h5`` file the manifest does not list.

    Decision for folders without a manifest (format 1 and 2, written before issue 23): refused
    as stale with the exact rebuild command (built from stats.json), not half-verified: their
    attributes and id maps carry no checksum, so what they hold cannot be trusted. A dataset
    cache (``core.dataset_config``) is rebuilt automatically instead.
    """
    manifest_file = path / MANIFEST_FILE
    if not manifest_file.is_file():
        stats = _unverified_stats(path)
        raise DataFormatError(
            f"{path}: stale data format version {stats.get('format_version', 'unknown')} (this code reads "
            f"{FORMAT_VERSION}: raw ids, a checksum of every file); {_best_rebuild_command(stats, path)}"
        )
    try:
        manifest = read_manifest(manifest_file, _best_rebuild_command(_unverified_stats(path), path))
        rebuild = rebuild_command(manifest["attrs"], path)
        extra = sorted({p.name for p in path.glob("*.h5")} - set(manifest["files"]))
        if extra:
            raise DataFormatError(f"{path / extra[0]} is not part of this dataset (its manifest); {rebuild}")
        for name, digest in manifest["files"].items():
            if not (path / name).is_file():
                raise DataFormatError(f"{path / name} is missing; {rebuild}")
            check_file(path / name, digest, rebuild)
    except CorruptFile as err:
        raise DataFormatError(str(err)) from None
    return manifest


def _open_checked(path: Path, folder: Path):
    """Opens one of our files, refusing foreign and stale ones with one line each."""
    try:
        f = h5py.File(path, "r")
    except OSError as err:  # h5py's error for a file that is not HDF5 or is truncated
        raise DataFormatError(f"{path}: cannot read as HDF5 ({' '.join(str(err).split())})") from None
    attrs = {key: _from_attr(value) for key, value in f.attrs.items()}
    if attrs.get("kind") != KIND:
        f.close()
        raise DataFormatError(f"{path}: not a sasrec-cce sequence shard (foreign HDF5 file)")
    if attrs.get("format_version") != FORMAT_VERSION:
        f.close()
        raise DataFormatError(
            f"{folder}: stale data format version {attrs.get('format_version')} (this code reads "
            f"{FORMAT_VERSION}: raw ids, checksums); {rebuild_command(attrs, folder)}"
        )
    return f, attrs


def load_sequences(path: str | os.PathLike) -> SequenceData:
    """Reads and validates a dataset folder written by ``write_shards``, raw ids included.

    Raises DataFormatError with a one-line message on a missing folder, a foreign, stale or
    corrupted (``verify_folder``) file, missing or mixed shards, or inconsistent arrays.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataFormatError(f"no prepared dataset at {path} (run tools/prepare_data.py first)")
    verify_folder(path)  # before h5py parses anything
    files = sorted(path.glob(_SHARD_GLOB))
    if not files:
        raise DataFormatError(f"{path}: no {_SHARD_GLOB} files; not a prepared dataset")
    offsets_parts, items_parts, user_id_parts, next_user, first = [np.zeros(1, np.int64)], [], [], 0, None
    for file in files:
        f, attrs = _open_checked(file, path)
        with f:
            first = first or attrs
            rebuild = rebuild_command(first, path)
            if len(files) != first["n_shards"]:
                raise DataFormatError(f"{path}: found {len(files)} shards, the dataset has {first['n_shards']}")
            if any(attrs.get(k) != first[k] for k in _DATASET_ATTRS):
                raise DataFormatError(f"{file}: shard belongs to a different write than {files[0].name}")
            offsets, items, user_ids = (_get(f, file, name, rebuild) for name in ("offsets", "items", "user_ids"))
        if attrs["user_start"] != next_user or len(offsets) != attrs["user_end"] - attrs["user_start"] + 1:
            raise DataFormatError(f"{file}: user range does not continue the previous shard")
        if len(user_ids) != len(offsets) - 1:
            raise DataFormatError(f"{file}: {len(user_ids)} user ids for {len(offsets) - 1} users")
        _check_csr(offsets.astype(np.int64), items, first["n_items"], str(file))
        offsets_parts.append(offsets[1:].astype(np.int64) + offsets_parts[-1][-1])
        items_parts.append(items.astype(np.int32, copy=False))
        user_id_parts.append(user_ids)
        next_user = attrs["user_end"]
    offsets = np.concatenate(offsets_parts)
    if next_user != first["n_users"] or offsets[-1] != first["n_interactions"]:
        raise DataFormatError(f"{path}: shards hold {next_user} users / {offsets[-1]} items, attributes say otherwise")

    ids_file = path / ITEM_IDS_FILE
    if not ids_file.is_file():
        raise DataFormatError(f"{path}: no {ITEM_IDS_FILE} (the raw item ids); {rebuild}")
    f, attrs = _open_checked(ids_file, path)
    with f:
        if attrs.get("write_id") != first["write_id"]:
            raise DataFormatError(f"{ids_file}: belongs to a different write than {files[0].name}")
        item_ids = _get(f, ids_file, "item_ids", rebuild)

    per_shard = ("shard", "user_start", "user_end")
    return SequenceData(
        offsets=offsets,
        items=np.concatenate(items_parts),
        n_users=int(first["n_users"]),
        n_items=int(first["n_items"]),
        # "path": where the data was read from, so a run can record it and load_run reload it
        attrs={**{k: v for k, v in first.items() if k not in per_shard}, "path": str(path)},
        user_ids=np.concatenate(user_id_parts),
        item_ids=item_ids,
    )
