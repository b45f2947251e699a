"""Which data a run trains on, bound by gin: ``dataset.name``, ``dataset.path`` and friends.

Sources, one per config:
- ``path`` alone: a folder of prepared shards (``tools/prepare_data.py`` wrote it);
- ``raw``: a provider's file, prepared once (``core.data.prepare.prepare``, the same function
  as the tool) into ``path`` when given, else into ``cache_dir``, and reused by later runs.
  With ``download = True`` (the seed's Beauty and ML-20M configs) a missing raw file is first
  downloaded from its provider (checksums where known, a progress bar on a terminal);
- ``synthetic_preset``: a ``core.data.synthetic`` preset, written once into ``cache_dir``.

Prepared data is checked against its raw file on every load (``core.data.prepare.check_source``:
size and mtime, then the SHA-256): a changed raw file rebuilds the cache, and a ``path`` folder
is refused with its rebuild command. A relative ``cache_dir`` is taken from the repository root,
not the working directory; a relative ``path`` or ``raw`` from the working directory when it
exists there, else from the repository root (where it is also created).

Missing data raises ``DataMissingError`` whose message is one line saying what to get from
where and the command that does it; ``experiments/run.py`` prints it as ``error: ...`` before
any run folder exists. What the function downloads or prepares is said on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import gin

from core.atomic import unwritable
from core.data.download import SOURCES, DownloadError, fetch, how_to_get
from core.data.prepare import Recipe, check_source, prepare
from core.data.shards import DataFormatError, SequenceData, load_sequences, rebuild_command
from core.paths import REPO_ROOT

log = logging.getLogger(__name__)



class DataMissingError(RuntimeError):
    """The configured data is not on disk; the message says how to get it."""


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset and where it came from (``source`` is the shard directory read)."""

    name: str
    data: SequenceData
    source: Path


def resolve_path(path: str | Path) -> Path:
    """A relative path is taken from the working directory where it exists there, else from the
    repository root (also when it exists nowhere yet: that is where it is created).

    Configs say ``data/beauty`` or ``../shared/data/...`` relative to the repo root; running
    from the root (the documented way) and from elsewhere (pytest, an IDE, a read-only folder)
    all find them, and write new data into the repository, not the working directory.
    """
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path


def _digest(obj) -> str:
    """Short stable hash of a JSON-able description: the cache key of prepared data."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


@contextlib.contextmanager
def _said_on_stderr():
    """Shows this package's INFO lines (downloading, preparing) on stderr while nothing else does.

    Runs configure logging only once training starts; data work comes before that.
    """
    logger = logging.getLogger("core")
    if logger.hasHandlers():
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _load_cached(cache: Path, recipe: Recipe) -> SequenceData:
    """Loads ``cache``, preparing ``recipe`` into it first when absent or unusable.

    A cache of an older data format, a corrupted one or one of an older version of the raw
    file is rebuilt rather than reported: it is ours. Two runs racing to build the same cache
    are fine: shard writes are atomic and refuse an existing directory, so the loser simply
    loads the winner's output.
    """
    if cache.exists():
        try:
            data = load_sequences(cache)
            if recipe.raw is not None:
                check_source(data.attrs, recipe.raw, cache, progress=sys.stderr.isatty())
            return data
        except DataFormatError as err:
            log.warning("dataset cache %s is unusable (%s): rebuilding it", cache, err)
            shutil.rmtree(cache)
    blocked = unwritable(cache)  # a file where the cache folder goes: one line, before any work
    if blocked:
        raise ValueError(f"dataset.cache_dir: cannot make {cache}: {blocked}")
    try:
        prepare(recipe, cache, progress=sys.stderr.isatty())
    except FileExistsError:
        if not cache.exists():
            raise
    return load_sequences(cache)


def _check_recipe_matches(data: SequenceData, recipe: Recipe, folder: Path) -> None:
    """Refuses prepared data whose filters or duplicate rule differ from the config's."""
    filters = data.attrs.get("filters") or {}
    have = {"min_user": filters.get("min_user"), "min_item": filters.get("min_item"),
            "iterative": filters.get("iterative"),
            "keep_duplicates": not (data.attrs.get("duplicates") or {}).get("dropped", True)}
    want = {"min_user": recipe.min_user, "min_item": recipe.min_item, "iterative": True,
            "keep_duplicates": recipe.keep_duplicates}
    differ = [f"{key} {have[key]} (config: {want[key]})" for key in want if have[key] != want[key]]
    if differ:
        raise DataFormatError(
            f"{folder} was prepared with {', '.join(differ)}: remove it (rm -r {folder}) and run again "
            f"to prepare it as configured, or point dataset.path elsewhere"
        )


def _get_raw(name: str, raw: str, raw_file: Path, recipe: Recipe, command: str | None) -> None:
    """Downloads the missing raw file when the config allows it; else one-line DataMissingError.

    ``command`` is the tools/prepare_data.py line that gets and prepares the data (None when the
    data is prepared into the cache: running again does that).
    """
    source = name if name in SOURCES and SOURCES[name]["fmt"] == recipe.fmt else None
    if source is None:
        if recipe.download:
            raise ValueError(f"dataset '{name}': dataset.download fetches {', '.join(SOURCES)} (with their "
                             f"format), not '{name}' ({recipe.fmt})")
        raise DataMissingError(
            f"dataset '{name}': raw file {raw} not found; put the file there or bind another one: "
            f"--gin_bindings \"dataset.raw = 'FILE'\""
        )
    get = how_to_get(source, raw)
    if not recipe.download:
        how = f"get it with: {command} (or {get})" if command else get
        raise DataMissingError(
            f"dataset '{name}': raw file {raw} not found; {how}, or let the run download it: "
            f"--gin_bindings 'dataset.download = True'"
        )
    log.info("dataset '%s': %s is missing, downloading it from %s", name, raw, recipe.url or SOURCES[source]["url"])
    try:
        fetch(source, raw_file, url=recipe.url, progress=sys.stderr.isatty())
    except DownloadError as err:
        then = f"or on a machine with internet: {command}" if command else "then run again"
        raise DataMissingError(
            f"dataset '{name}': cannot download {raw} ({' '.join(str(err).split())}); {get}, {then}"
        ) from None


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
    keep_duplicates: bool = False,
    download: bool = False,
    download_url: str | None = None,
    synthetic_preset: str | None = None,
    synthetic_overrides: dict | None = None,
    cache_dir: str = "data/cache",
    prepare_hint: str | None = None,
) -> Dataset:
    """Loads the configured dataset, preparing (and downloading) it first where the config says.

    See the module docstring for the sources. ``fmt``, ``columns``, ``min_user``, ``min_item``
    and ``keep_duplicates`` describe how a raw file is prepared; ``download`` lets a missing raw
    file of the seed's datasets (``name`` beauty or ml20m) be fetched, ``download_url`` from a
    mirror. ``synthetic_overrides`` (e.g. ``{"n_users": 500}``; ``seed`` allowed) go to
    ``core.data.synthetic.write_synthetic``. ``prepare_hint`` replaces the command printed when
    a ``path``-only dataset is missing.
    """
    if synthetic_preset is not None and (path is not None or raw is not None):
        raise ValueError(f"dataset '{name}': dataset.synthetic_preset goes without dataset.path and dataset.raw")
    if synthetic_preset is None and path is None and raw is None:
        raise ValueError(f"dataset '{name}': set dataset.path, dataset.raw or dataset.synthetic_preset")
    cache_root = REPO_ROOT / Path(cache_dir).expanduser()  # an absolute cache_dir stays as it is
    target = None if path is None else resolve_path(path)

    if raw is None and synthetic_preset is None:
        if not target.exists():
            hint = prepare_hint or (
                f"python tools/prepare_data.py --format {fmt or 'FORMAT'} --raw RAW_FILE --out {path}"
            )
            raise DataMissingError(
                f"dataset '{name}': no prepared data at {path}; get it with: {hint} "
                f"(or point the config elsewhere: --gin_bindings \"dataset.path = 'DIR'\")"
            )
        return Dataset(name, load_sequences(target), target)

    if raw is not None:
        raw_file = resolve_path(raw)
        recipe = Recipe(fmt=fmt or "", raw=raw_file, columns=columns, min_user=min_user, min_item=min_item,
                        keep_duplicates=keep_duplicates, download=download, url=download_url)
        try:
            recipe.check()
        except DataFormatError as err:
            raise ValueError(f"dataset '{name}': {err}") from None
        if target is not None and target.exists():
            data = load_sequences(target)
            _check_recipe_matches(data, recipe, target)
            if raw_file.is_file():  # a raw file deleted after preparing is fine
                check_source(data.attrs, raw_file, target, progress=sys.stderr.isatty())
            return Dataset(name, data, target)
        command = None if path is None else (
            f"python tools/prepare_data.py --format {fmt} --download --raw {raw} --out {path}")
        with _said_on_stderr():
            if not raw_file.is_file():
                _get_raw(name, raw, raw_file, recipe, command)
            if target is not None:
                prepare(recipe, target, progress=sys.stderr.isatty())
                return Dataset(name, load_sequences(target), target)
            key = _digest([str(raw_file.resolve()), fmt, columns, min_user, min_item, keep_duplicates])
            cache = cache_root / f"{name}-{key}"
            return Dataset(name, _load_cached(cache, recipe), cache)

    from core.data.synthetic import PRESETS

    if synthetic_preset not in PRESETS:
        raise ValueError(
            f"dataset '{name}': unknown synthetic preset '{synthetic_preset}' "
            f"(known: {', '.join(sorted(PRESETS))})"
        )
    overrides = dict(synthetic_overrides or {})
    cache = cache_root / f"synthetic-{synthetic_preset}-{_digest(overrides)}"
    recipe = Recipe(fmt="synthetic", preset=synthetic_preset, seed=overrides.pop("seed", 0), overrides=overrides)
    with _said_on_stderr():
        return Dataset(name, _load_cached(cache, recipe), cache)
