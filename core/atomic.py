"""The one place files and folders are written atomically: a crash leaves the old or the new, never half.

- ``atomic_file(path)``: yields a binary file object on a temporary file beside ``path``, then
  fsyncs it and ``os.replace``s it over ``path``. ``write_bytes``/``write_text``/``write_json``
  are the one-liners built on it (checkpoints use it through ``core.checkpoint``).
- ``atomic_dir(path)``: yields a temporary folder beside ``path`` to fill, then renames it to
  ``path`` (refusing to replace an existing folder). Prepared data, benchmark and study
  outputs use it.
- ``swap_dir(path)``: replaces the folder ``path`` by the one written as ``.NAME.new``
  (``swap_names``): the old one is renamed to ``.NAME.old``, the new one in, the old removed
  (a folder cannot be renamed over a non-empty one: two renames). ``whole_dir`` finds what a
  crash between them left whole and ``settle_swap`` finishes such a swap before the next one.
  Sharded checkpoints (``core.checkpoint``) use it.

Temporaries are named ``.NAME.tmp-PID-RANDOM`` and are removed on any exception. A process
killed with SIGKILL cannot clean up, so every ``atomic_*`` call first removes the temporaries
of ``path`` left by processes of this host that no longer run (``remove_stale``).
Files and folders get the modes ``open()``/``mkdir()`` would give under the current umask
(``mkstemp``/``mkdtemp`` alone make them private: 0600/0700).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def unwritable(path: str | Path, *, file: bool = False) -> str | None:
    """Why ``path`` cannot be made a folder (``file``: written as a file), or None: its nearest
    existing ancestor is a file or not writable (a read-only mount too), or ``path`` is a
    folder where a file is wanted. Every command checks its outputs with it before any work,
    so a bad output path is one clear line and nothing is computed in vain."""
    path = Path(path).absolute()
    if file and path.is_dir():
        return f"{path} is a folder"
    start = path.parent if file else path
    existing = next(p for p in (start, *start.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        return f"{existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def remove_stale(path: Path) -> list[Path]:
    """Removes temporaries of ``path`` whose writer (a pid on this host) is gone; returns them."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(_tmp_prefix(path) + "*"):
        pid = tmp.name[len(_tmp_prefix(path)):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Write ``path`` through the yielded file object; it appears only when the block succeeds."""
    path = Path(path)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(data: bytes, path: str | Path) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_text(text: str, path: str | Path) -> None:
    """A text file written atomically (config.gin, history.jsonl, tables)."""
    write_bytes(text.encode(), path)


def write_json(obj, path: str | Path) -> None:
    """Pretty JSON written atomically (metrics.json, results.json)."""
    write_bytes((json.dumps(obj, indent=2) + "\n").encode(), path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Fill the yielded temporary folder; it becomes ``path`` when the block succeeds.

    Raises ``FileExistsError`` if ``path`` exists (before or, in a race, at the rename): a
    prepared folder is never merged into or overwritten.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", dir=path.parent))
    try:
        tmp.chmod(0o777 & ~_UMASK)
        yield tmp
        os.rename(tmp, path)  # atomic on one filesystem; fails if ``path`` appeared meanwhile
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if path.exists() and not isinstance(err, FileExistsError):
            raise FileExistsError(f"{path} already exists") from err
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- a folder replaced by a new one -------------------------------------------------------------


def swap_names(path: str | Path) -> tuple[Path, Path]:
    """Where ``swap_dir`` wants the new folder written (``.NAME.new``) and where it puts the old
    one during the swap (``.NAME.old``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.new"), path.with_name(f".{path.name}.old")


def swap_dir(path: str | Path) -> None:
    """Puts the finished folder ``.NAME.new`` in place of the folder ``path`` (if any): the old
    one renamed aside, the new one in, the old removed. A crash between the renames leaves no
    ``path``, but both folders whole: ``whole_dir`` picks one."""
    path = Path(path)
    new, old = swap_names(path)
    if path.exists():
        os.rename(path, old)
    os.rename(new, path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)


def whole_dir(path: str | Path, is_whole: Callable[[Path], bool]) -> Path | None:
    """The folder written as ``path`` by ``swap_dir``: ``path``; after a crash between its two
    renames, the new folder if ``is_whole`` (it was finished), else the old one. None if none is."""
    path = Path(path)
    return next((c for c in (path, *swap_names(path)) if is_whole(c)), None)


def settle_swap(path: str | Path, is_whole: Callable[[Path], bool]) -> None:
    """Before a new ``swap_dir`` of ``path``: finishes a swap a crash interrupted (``whole_dir``'s
    choice becomes ``path``) and removes what is left of unfinished ones."""
    path = Path(path)
    if not path.exists() and (whole := whole_dir(path, is_whole)) is not None:
        os.rename(whole, path)
    for leftover in swap_names(path):
        if leftover.exists():
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


def _fsync_dir(folder: Path) -> None:
    """Makes renames in ``folder`` durable where the file system allows it (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
