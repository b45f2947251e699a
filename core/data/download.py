"""Downloads of the public raw logs, with a progress bar, size/checksum checks and atomic writes.

Known figures of the official files: ``ml-20m.zip`` is 198,702,078 bytes with MD5
cd245b17a1ae2cc31bb14903e1204af3 (GroupLens' own ``ml-20m.zip.md5``). SNAP publishes no size or
checksum for ``ratings_Beauty.csv``; its documented row count (2,023,070 ratings) is checked
instead, on top of the HTTP Content-Length. A ``url`` override (a mirror, or a test fixture) is
checked against Content-Length only: the official figures would not apply to it.
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

from tqdm.auto import tqdm

SOURCES = {
    "ml20m": {
        "url": "https://files.grouplens.org/datasets/movielens/ml-20m.zip",
        "size": 198_702_078,
        "md5": "cd245b17a1ae2cc31bb14903e1204af3",
        "member": "ratings.csv",  # extracted from the zip (it sits at ml-20m/ratings.csv)
    },
    "beauty": {
        "url": "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_Beauty.csv",
        "rows": 2_023_070,
    },
}


class DownloadError(OSError):
    """A failed, truncated or corrupt download; nothing is left at the destination."""


def _tmp_beside(dest: Path, tag: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.{tag}-", dir=dest.parent)
    os.close(fd)
    return Path(name)


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    size: int | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Streams ``url`` to ``dest`` via a temporary file renamed at the end.

    Checks the byte count against Content-Length (when sent) and ``size``, and the MD5 against
    ``md5``, when given. Raises DownloadError on any failure, removing the partial file.
    """
    dest = Path(dest)
    tmp = _tmp_beside(dest, "part")
    digest = hashlib.md5()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            announced = response.headers.get("Content-Length")
            announced = int(announced) if announced is not None else None
            with tqdm(
                total=announced, unit="B", unit_scale=True, desc=f"downloading {dest.name}", disable=not progress
            ) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if announced is not None and received != announced:
            raise DownloadError(f"{url}: truncated download ({received} of {announced} bytes)")
        if received == 0:
            raise DownloadError(f"{url}: empty download")
        if size is not None and received != size:
            raise DownloadError(f"{url}: got {received} bytes, the official file has {size}")
        if md5 is not None and digest.hexdigest() != md5:
            raise DownloadError(f"{url}: MD5 {digest.hexdigest()} does not match the official {md5}")
        os.replace(tmp, dest)
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError is an OSError
        tmp.unlink(missing_ok=True)
        if isinstance(err, DownloadError):
            raise
        raise DownloadError(f"download of {url} failed: {err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Copies the archive entry whose name ends with ``member`` to ``dest`` atomically."""
    tmp = _tmp_beside(dest, "unzip")
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if not names:
                raise DownloadError(f"{archive.name}: no {member} inside the archive")
            with zf.open(names[0]) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, dest)
    except zipfile.BadZipFile as err:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{archive.name}: corrupt zip archive ({err})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _count_rows(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))


def fetch(name: str, dest: str | os.PathLike, *, url: str | None = None, progress: bool = True) -> Path:
    """Downloads the raw log ``name`` ("ml20m" or "beauty") to ``dest`` (the ready-to-read file).

    ``url`` overrides the official address. For ml20m the zip is downloaded beside ``dest``,
    its ratings.csv extracted to ``dest`` and the zip removed.
    """
    if name not in SOURCES:
        raise ValueError(f"no download for {name!r}; known: {', '.join(SOURCES)}")
    source, dest = SOURCES[name], Path(dest)
    official = url is None
    url = source["url"] if official else url
    checks = {"size": source.get("size"), "md5": source.get("md5")} if official else {}
    if "member" in source:
        archive = _tmp_beside(dest, "zip")
        try:
            download(url, archive, progress=progress, **checks)
            _extract_member(archive, source["member"], dest)
        finally:
            archive.unlink(missing_ok=True)
    else:
        download(url, dest, progress=progress, **checks)
        if official and _count_rows(dest) != source["rows"]:
            rows = _count_rows(dest)
            dest.unlink()
            raise DownloadError(f"{url}: {rows} rows, the official file has {source['rows']}")
    return dest
