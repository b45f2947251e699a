"""Which data a run trains on, bound by gin: ``dataset.name``, ``dataset.path`` and friends.

Three sources, exactly one per config:
- ``path``: a directory of prepared shards (``tools/prepare_data.py`` wrote it);
- ``raw``: a provider's file, prepared once into ``cache_dir`` and reused by later runs;
- ``synthetic_preset``: a ``core.data.synthetic`` preset, written once into ``cache_dir``.

Missing data raises ``DataMissingError`` whose message is one line with the command that gets
it; ``experiments/run.py`` prints it as ``error: ...`` before any run folder exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import gin

from core.data.shards import DataFormatError, SequenceData, load_sequences

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


class DataMissingError(RuntimeError):
    """The configured data is not on disk; the message says how to get it."""


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset and where it came from (``source`` is the shard directory read)."""

    name: str
    data: SequenceData
    source: Path


def resolve_path(path: str | Path) -> Path:
    """A relative path is taken from the working directory, else from the repository root.

    Configs say ``data/beauty`` or ``../shared/data/...`` relative to the repo root; running
    from the root (the documented way) and from elsewhere (pytest, an IDE) both find them.
    """
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    from_root = REPO_ROOT / path
    return from_root if from_root.exists() else path


def _digest(obj) -> str:
    """Short stable hash of a JSON-able description: the cache key of prepared data."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _load_cached(cache: Path, build) -> SequenceData:
    """Loads ``cache``, building it first with ``build(cache)`` when absent or stale.

    A cache left by an older data format is rebuilt rather than reported: it is ours.
    Two runs racing to build the same cache are fine: shard writes are atomic and refuse an
    existing directory, so the loser simply loads the winner's output.
    """
    if cache.exists():
        try:
            return load_sequences(cache)
        except DataFormatError as err:
            log.warning("dataset cache %s is stale (%s): rebuilding it", cache, err)
            shutil.rmtree(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = build(cache)
    except Exception:
        if not cache.exists():
            raise
        out = cache
    return load_sequences(out if out is not None else cache)


@gin.configurable
def dataset(
    *,
    name: str,
    path: str | None = None,
    raw: str | None = None,
    fmt: str | None = None,
    columns: dict | None = None,
    min_user: int = 3,
    min_item: int = 3,
    synthetic_preset: str | None = None,
    synthetic_overrides: dict | None = None,
    cache_dir: str = "data/cache",
    prepare_hint: str | None = None,
) -> Dataset:
    """Loads the configured dataset (see the module docstring for the three sources).

    ``fmt``, ``columns``, ``min_user`` and ``min_item`` go to ``core.data.prepare`` for a raw
    file; ``synthetic_overrides`` (e.g. ``{"n_users": 500}``; ``seed`` allowed) go to
    ``core.data.synthetic.write_synthetic``. ``prepare_hint`` is the command printed when
    ``path`` is missing (defaults to a ``tools/prepare_data.py`` line built from ``fmt``).
    """
    given = [p for p in (path, raw, synthetic_preset) if p is not None]
    if len(given) != 1:
        raise ValueError(
            f"dataset '{name}': set exactly one of dataset.path, dataset.raw, "
            f"dataset.synthetic_preset (got {len(given)})"
        )
    cache_root = Path(cache_dir).expanduser()

    if path is not None:
        shard_dir = resolve_path(path)
        if not shard_dir.exists():
            hint = prepare_hint or (
                f"python tools/prepare_data.py --format {fmt or 'FORMAT'} --raw RAW_FILE --out {path}"
            )
            raise DataMissingError(
                f"dataset '{name}': no prepared data at {path}; get it with: {hint} "
                f"(or point the config elsewhere: --gin_bindings \"dataset.path = 'DIR'\")"
            )
        return Dataset(name, load_sequences(shard_dir), shard_dir)

    if raw is not None:
        raw_file = resolve_path(raw)
        if not raw_file.is_file():
            raise DataMissingError(
                f"dataset '{name}': raw file {raw} not found; put the file there or bind "
                f"another one: --gin_bindings \"dataset.raw = 'FILE'\""
            )
        from core.data.prepare import prepare_dataset

        stat = raw_file.stat()
        key = _digest([str(raw_file.resolve()), stat.st_size, stat.st_mtime_ns, fmt, columns,
                       min_user, min_item])
        cache = cache_root / f"{name}-{key}"

        def build(out_dir: Path) -> Path:
            log.info("preparing %s from %s into %s (once; later runs reuse it)", name, raw, out_dir)
            return prepare_dataset(raw=raw_file, fmt=fmt, out_dir=out_dir, min_user=min_user,
                                   min_item=min_item, columns=columns, progress=sys.stderr.isatty())

        return Dataset(name, _load_cached(cache, build), cache)

    from core.data.synthetic import PRESETS, write_synthetic

    if synthetic_preset not in PRESETS:
        raise ValueError(
            f"dataset '{name}': unknown synthetic preset '{synthetic_preset}' "
            f"(known: {', '.join(sorted(PRESETS))})"
        )
    overrides = dict(synthetic_overrides or {})
    cache = cache_root / f"synthetic-{synthetic_preset}-{_digest(overrides)}"

    def build_synthetic(out_dir: Path) -> Path:
        log.info("writing synthetic preset %s into %s (once; later runs reuse it)",
                 synthetic_preset, out_dir)
        return write_synthetic(out_dir, preset=synthetic_preset, **overrides)

    return Dataset(name, _load_cached(cache, build_synthetic), cache)
