"""The one place files and folders are written atomically: a crash leaves the old or the new, never half.

- ``atomic_file(path)``: yields a binary file object on a temporary file beside ``path``, then
  fsyncs it and ``os.replace``s it over ``path``. ``write_bytes``/``write_text``/``write_json``
  are the one-liners built on it (checkpoints use it through ``core.checkpoint``).
- ``atomic_dir(path)``: yields a temporary folder beside ``path`` to fill, then renames it to
  ``path`` (refusing to replace an existing folder). Prepared data, benchmark and study
  outputs use it.

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
from typing import BinaryIO


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
