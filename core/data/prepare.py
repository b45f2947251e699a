"""Preparing data, in one place: raw log (or synthetic preset) -> HDF5 shards + stats.json.

``prepare(recipe, out_dir)`` is what ``tools/prepare_data.py`` and ``core.dataset_config.dataset``
both call: it checks the ``Recipe``, removes temporaries that killed writers left beside
``out_dir``, downloads the raw file when the recipe allows it and the file is missing, then runs
``prepare_dataset`` (read -> drop exact duplicates -> k-core -> renumber -> time sort -> shards)
or ``write_synthetic``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from core.atomic import remove_stale
from core.data.download import SOURCES, fetch, source_for_format
from core.data.filtering import duplicates, kcore, to_csr
from core.data.readers import FORMATS, parse_columns, read_log
from core.data.shards import MIN_SEQ_LEN, DataFormatError, rebuild_command, write_shards
from core.data.synthetic import write_synthetic

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


def check_source(attrs: dict, raw: Path, folder: Path, *, progress: bool = False) -> None:
    """Refuses data prepared from another version of ``raw`` (DataFormatError with the rebuild
    command). Size and mtime first: when both equal what ``prepare_dataset`` recorded, the file
    is not read; else its SHA-256 is compared with ``source_hash``. A file touched but unchanged
    passes, and is hashed again on each check until the folder is rebuilt."""
    stat = raw.stat()
    if attrs.get("raw_stat") == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}:
        return
    if attrs.get("source_hash") == f"sha256:{file_sha256(raw, progress=progress)}":
        log.info("%s: modified time changed, content the same as when %s was prepared", raw, folder)
        return
    raise DataFormatError(
        f"{folder} was prepared from another version of {raw} (its SHA-256 differs from the recorded "
        f"source_hash); {rebuild_command({**attrs, 'raw_path': str(raw)}, folder)}"
    )


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
    keep_duplicates: bool = False,
    progress: bool = True,
) -> Path:
    """Prepares ``raw`` (format ``fmt``, one of FORMATS) into a new dataset folder ``out_dir``.

    Steps: read -> drop exact duplicate (user, item, time) rows unless ``keep_duplicates``
    (counted in the log and stats.json) -> k-core filter (``iterative`` repeats it to a fixed
    point) -> renumber -> stable time sort per user -> shards with the raw ids + stats.json
    (atomic). ``columns`` is the generic format's mapping. Returns the output folder. Raises
    DataFormatError on bad input and FileExistsError if out_dir exists; nothing is written in
    either case.
    """
    raw, out_dir = Path(raw), Path(out_dir)
    if fmt not in FORMATS:
        raise DataFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_filters(min_user, min_item)
    if out_dir.exists():
        raise FileExistsError(f"output directory already exists: {out_dir}")
    if not raw.is_file():
        raise DataFormatError(f"raw file not found: {raw}")

    raw_stat = raw.stat()  # before hashing: a file changed meanwhile then fails the next run's check
    source_hash = file_sha256(raw, progress=progress)
    rawlog = read_log(raw, fmt=fmt, columns=columns, progress=progress)
    n_raw_users, n_raw_items = len(rawlog.user_ids), len(rawlog.item_ids)
    log.info("read %d interactions, %d users, %d items", len(rawlog.user), n_raw_users, n_raw_items)

    copies = duplicates(rawlog.user, rawlog.item, rawlog.time)
    n_copies = int(copies.sum())
    if n_copies:
        log.info("%s %d exact duplicate (user, item, time) rows", "kept (keep_duplicates)" if keep_duplicates
                 else "dropped", n_copies)
    rows = np.flatnonzero(~copies) if n_copies and not keep_duplicates else None  # None: all rows
    del copies
    user, item = (rawlog.user, rawlog.item) if rows is None else (rawlog.user[rows], rawlog.item[rows])
    keep = kcore(user, item, min_user=min_user, min_item=min_item, iterative=iterative,
                 n_users=n_raw_users, n_items=n_raw_items)  # (n_kept,) indices into ``rows``
    keep = keep if rows is None else rows[keep]  # indices into the raw log
    del user, item, rows
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
    offsets, items, n_items, kept_users, kept_items = to_csr(
        rawlog.user[keep], rawlog.item[keep], time, n_users=n_raw_users, n_items=n_raw_items
    )
    attrs = {
        "source": f"{fmt}:{raw.name}",
        "raw_path": str(raw),
        "source_hash": f"sha256:{source_hash}",
        "raw_stat": {"size": raw_stat.st_size, "mtime_ns": raw_stat.st_mtime_ns},  # check_source's fast path
        "columns": parse_columns(columns) if fmt == "generic" else None,
        "filters": {"min_user": min_user, "min_item": min_item, "iterative": iterative},
        "duplicates": {"rows": n_copies, "dropped": not keep_duplicates},
        "raw": {"n_interactions": len(rawlog.user), "n_users": n_raw_users, "n_items": n_raw_items},
        "time_order": "file order" if rawlog.time is None else "timestamp, stable (ties keep file order)",
    }
    user_ids, item_ids = rawlog.user_ids[kept_users], rawlog.item_ids[kept_items]
    del rawlog, keep, time
    return write_shards(out_dir, offsets=offsets, items=items, n_items=n_items, attrs=attrs,
                        user_ids=user_ids, item_ids=item_ids, progress=progress)


@dataclass(frozen=True)
class Recipe:
    """What to prepare: a raw file in format ``fmt`` (one of FORMATS), or ``fmt="synthetic"``.

    Raw: ``raw`` (the file), ``columns`` (generic format), the k-core filters, whether to keep
    exact duplicate rows, and whether a missing ``raw`` may be downloaded (ml20m and amazon's
    Beauty only; ``url`` replaces the official address). Synthetic: ``preset``, ``seed`` and
    ``overrides`` of the preset's parameters.
    """

    fmt: str
    raw: Path | None = None
    columns: str | dict | None = None
    min_user: int = 3
    min_item: int = 3
    iterative: bool = True
    keep_duplicates: bool = False
    download: bool = False
    url: str | None = None
    preset: str | None = None
    seed: int = 0
    overrides: dict | None = None

    def check(self) -> None:
        """Everything that can be refused before any work starts (DataFormatError)."""
        if self.fmt == "synthetic":
            if self.preset is None or self.raw is not None or self.download:
                raise DataFormatError("synthetic data takes a preset (and a seed), not a raw file or a download")
            return
        if self.fmt not in FORMATS:
            raise DataFormatError(f"unknown format {self.fmt!r}; choose one of {', '.join(FORMATS)}")
        if self.raw is None:
            raise DataFormatError("a raw file is required")
        if self.download and source_for_format(self.fmt) is None:
            raise DataFormatError(f"downloads exist for ml20m and amazon (Beauty), not {self.fmt}")
        if self.url and not self.download:
            raise DataFormatError("a download url goes with download")
        if self.columns and self.fmt != "generic":
            raise DataFormatError(f"a column mapping applies to the generic format only, not {self.fmt!r}")
        check_filters(self.min_user, self.min_item)


_TEMPORARY = re.compile(r"^\.(.+)\.tmp-\d+-")  # core.atomic's temporaries: .NAME.tmp-PID-RANDOM


def remove_stale_temporaries(folder: Path) -> None:
    """Removes the temporaries of every NAME in ``folder`` whose writer is gone (e.g. kill -9)."""
    if not folder.is_dir():
        return
    for name in {m.group(1) for m in map(_TEMPORARY.match, os.listdir(folder)) if m}:
        for path in remove_stale(folder / name):
            log.info("removed %s, left by a writer that no longer runs", path)


def prepare(recipe: Recipe, out_dir: str | os.PathLike, *, progress: bool = True) -> Path:
    """Prepares ``recipe`` into the new folder ``out_dir``: the one way data gets prepared.

    Downloads a missing raw file first when ``recipe.download`` (DownloadError on failure).
    Raises DataFormatError on a bad recipe or bad input and FileExistsError if ``out_dir``
    exists; nothing is left at ``out_dir`` in any of these cases.
    """
    out_dir = Path(out_dir)
    recipe.check()
    if out_dir.exists():
        raise FileExistsError(f"output directory already exists: {out_dir}")
    remove_stale_temporaries(out_dir.parent)
    if recipe.fmt == "synthetic":
        log.info("writing synthetic preset %s (seed %d) into %s", recipe.preset, recipe.seed, out_dir)
        return write_synthetic(out_dir, preset=recipe.preset, seed=recipe.seed, **(recipe.overrides or {}))
    raw = Path(recipe.raw)
    if recipe.download and not raw.exists():
        name = source_for_format(recipe.fmt)
        log.info("%s is missing: downloading it from %s", raw, recipe.url or SOURCES[name]["url"])
        fetch(name, raw, url=recipe.url, progress=progress)
    log.info("preparing %s (%s) into %s", raw, recipe.fmt, out_dir)
    return prepare_dataset(raw=raw, fmt=recipe.fmt, out_dir=out_dir, min_user=recipe.min_user,
                           min_item=recipe.min_item, iterative=recipe.iterative, columns=recipe.columns,
                           keep_duplicates=recipe.keep_duplicates, progress=progress)
