"""Raw log -> filtered, renumbered, time-ordered sequences -> HDF5 shards + stats.json."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from tqdm.auto import tqdm

from core.data.filtering import kcore, to_csr
from core.data.readers import FORMATS, read_log
from core.data.shards import MIN_SEQ_LEN, DataFormatError, write_shards

log = logging.getLogger(__name__)


def file_sha256(path: Path, *, progress: bool = False) -> str:
    """Hex SHA-256 of a file's bytes, recorded so a dataset names the exact raw file it came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc="hashing", disable=not progress
    ) as bar:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def check_filters(min_user: int, min_item: int) -> None:
    """Rejects thresholds that the leave-one-out split cannot honour."""
    if min_user < MIN_SEQ_LEN:
        raise DataFormatError(
            f"min_user must be >= {MIN_SEQ_LEN}: leave-one-out needs a training item, a validation "
            f"and a test target per user (got {min_user})"
        )
    if min_item < 1:
        raise DataFormatError(f"min_item must be >= 1 (got {min_item})")


def prepare_dataset(
    *,
    raw: str | os.PathLike,
    fmt: str,
    out_dir: str | os.PathLike,
    min_user: int = 3,
    min_item: int = 3,
    iterative: bool = True,
    columns: str | dict | None = None,
    progress: bool = True,
) -> Path:
    """Prepares ``raw`` (format ``fmt``, one of FORMATS) into a new dataset folder ``out_dir``.

    Steps: read -> k-core filter (``iterative`` repeats it to a fixed point) -> renumber ->
    stable time sort per user -> shards + stats.json (atomic). ``columns`` is the generic
    format's mapping. Returns the output folder. Raises DataFormatError on bad input and
    FileExistsError if out_dir exists; nothing is written in either case.
    """
    raw, out_dir = Path(raw), Path(out_dir)
    if fmt not in FORMATS:
        raise DataFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_filters(min_user, min_item)
    if out_dir.exists():
        raise FileExistsError(f"output directory already exists: {out_dir}")
    if not raw.is_file():
        raise DataFormatError(f"raw file not found: {raw}")

    source_hash = file_sha256(raw, progress=progress)
    rawlog = read_log(raw, fmt=fmt, columns=columns, progress=progress)
    n_raw_users, n_raw_items = len(rawlog.user_ids), len(rawlog.item_ids)
    log.info("read %d interactions, %d users, %d items", len(rawlog.user), n_raw_users, n_raw_items)

    keep = kcore(
        rawlog.user,
        rawlog.item,
        min_user=min_user,
        min_item=min_item,
        iterative=iterative,
        n_users=n_raw_users,
        n_items=n_raw_items,
    )
    if not iterative:
        # One pass may leave users below min_user; the split needs them whole, so drop those
        # users (items may then fall below min_item: that is what single-pass means).
        users_ok = kcore(
            rawlog.user[keep],
            rawlog.item[keep],
            min_user=min_user,
            min_item=0,
            iterative=False,
            n_users=n_raw_users,
            n_items=n_raw_items,
        )
        keep = keep[users_ok]
    if len(keep) == 0:
        raise DataFormatError(
            f"{raw}: no interactions left after filtering (min_user={min_user}, min_item={min_item})"
        )
    time = None if rawlog.time is None else rawlog.time[keep]
    offsets, items, n_items, _, _ = to_csr(
        rawlog.user[keep], rawlog.item[keep], time, n_users=n_raw_users, n_items=n_raw_items
    )
    attrs = {
        "source": f"{fmt}:{raw.name}",
        "source_hash": f"sha256:{source_hash}",
        "filters": {"min_user": min_user, "min_item": min_item, "iterative": iterative},
        "raw": {"n_interactions": len(rawlog.user), "n_users": n_raw_users, "n_items": n_raw_items},
        "time_order": "file order" if rawlog.time is None else "timestamp, stable (ties keep file order)",
    }
    del rawlog, keep, time
    return write_shards(out_dir, offsets=offsets, items=items, n_items=n_items, attrs=attrs, progress=progress)
