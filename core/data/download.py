"""Downloads of the public raw logs, with a progress bar, size/checksum checks and atomic writes.

Known figures of the official files: ``ml-20m.zip`` is 198,702,078 bytes with MD5
cd245b17a1ae2cc31bb14903e1204af3 (GroupLens' own ``ml-20m.zip.md5``). SNAP publishes no size or
checksum for ``ratings_Beauty.csv``; its documented row count (2,023,070 ratings) is checked
instead, on top of the HTTP Content-Length. A ``url`` override (a mirror, or a test fixture) is
checked against Content-Length only: the official figures would not apply to it.

Files appear only complete (``core.atomic.atomic_file``); the ml-20m zip lives in an anonymous
temporary file, so even a kill -9 leaves nothing behind but the temporaries that the next
write to the same destination removes.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from core.atomic import atomic_file

SOURCES = {
    "ml20m": {
        "url": "https://files.grouplens.org/datasets/movielens/ml-20m.zip",
        "fmt": "ml20m",  # the tools/prepare_data.py format of the file
        "size": 198_702_078,
        "md5": "cd245b17a1ae2cc31bb14903e1204af3",
        "member": "ratings.csv",  # extracted from the zip (it sits at ml-20m/ratings.csv)
    },
    "beauty": {
        "url": "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_Beauty.csv",
        "fmt": "amazon",
        "rows": 2_023_070,
    },
}


class DownloadError(OSError):
    """A failed, truncated or corrupt download; nothing is left at the destination."""


def source_for_format(fmt: str) -> str | None:
    """The SOURCES entry a ``--format`` downloads (ml20m -> ml20m, amazon -> beauty), or None."""
    return next((name for name, source in SOURCES.items() if source["fmt"] == fmt), None)


def how_to_get(name: str, dest: str | os.PathLike) -> str:
    """One sentence: what to download from where, and where to put it."""
    source = SOURCES[name]
    if "member" in source:
        return f"download {source['url']} and extract its {source['member']} to {dest}"
    return f"download {source['url']} to {dest}"


def _stream(url: str, out: BinaryIO, *, size: int | None, md5: str | None, rows: int | None,
            progress: bool, timeout: float, label: str) -> None:
    """Copies ``url`` into ``out``, then checks length, size, MD5 and row count; raises DownloadError."""
    digest = hashlib.md5()
    received = newlines = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            announced = response.headers.get("Content-Length")
            announced = int(announced) if announced is not None else None
            with tqdm(total=announced, unit="B", unit_scale=True, desc=f"downloading {label}",
                      disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    newlines += chunk.count(b"\n")
                    received += len(chunk)
                    bar.update(len(chunk))
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError is an OSError
        raise DownloadError(f"download of {url} failed: {' '.join(str(err).split())}") from None
    if announced is not None and received != announced:
        raise DownloadError(f"{url}: truncated download ({received} of {announced} bytes)")
    if received == 0:
        raise DownloadError(f"{url}: empty download")
    if size is not None and received != size:
        raise DownloadError(f"{url}: got {received} bytes, the official file has {size}")
    if md5 is not None and digest.hexdigest() != md5:
        raise DownloadError(f"{url}: MD5 {digest.hexdigest()} does not match the official {md5}")
    if rows is not None and newlines != rows:
        raise DownloadError(f"{url}: {newlines} rows, the official file has {rows}")


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    size: int | None = None,
    md5: str | None = None,
    rows: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Streams ``url`` to ``dest`` atomically.

    Checks the byte count against Content-Length (when sent) and ``size``, the MD5 against
    ``md5`` and the line count against ``rows``, when given. Raises DownloadError on any
    failure; ``dest`` then stays as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(dest) as out:
        _stream(url, out, size=size, md5=md5, rows=rows, progress=progress, timeout=timeout, label=dest.name)
    return dest


def _extract_member(archive: BinaryIO, member: str, dest: Path) -> Path:
    """Copies the archive entry whose name ends with ``member`` to ``dest`` atomically."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if not names:
                raise DownloadError(f"no {member} inside the archive")
            with zf.open(names[0]) as src, atomic_file(dest) as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"corrupt zip archive ({err})") from None
    return dest


def fetch(name: str, dest: str | os.PathLike, *, url: str | None = None, progress: bool = True,
          timeout: float = 60.0) -> Path:
    """Downloads the raw log ``name`` ("ml20m" or "beauty") to ``dest`` (the ready-to-read file).

    ``url`` overrides the official address. For ml20m the zip goes to an anonymous temporary
    file beside ``dest`` and only its ratings.csv is kept, at ``dest``.
    """
    if name not in SOURCES:
        raise ValueError(f"no download for {name!r}; known: {', '.join(SOURCES)}")
    source, dest = SOURCES[name], Path(dest)
    official = url is None
    url = source["url"] if official else url
    checks = {key: source.get(key) for key in ("size", "md5", "rows")} if official else {}
    if "member" not in source:
        return download(url, dest, progress=progress, timeout=timeout, **checks)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=dest.parent) as archive:  # unlinked already: no leftovers
        _stream(url, archive, progress=progress, timeout=timeout, label=Path(url).name,
                **{"size": None, "md5": None, "rows": None, **checks})
        archive.seek(0)
        try:
            return _extract_member(archive, source["member"], dest)
        except DownloadError as err:
            raise DownloadError(f"{url}: {err}") from None
