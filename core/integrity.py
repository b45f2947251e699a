"""The one integrity check: a SHA-256 digest written with a file and checked before the file is
parsed, so a corrupted file is refused with one line instead of being trusted, hanging a
parser or ending in a traceback.

- ``sha256_file(path)``: the hex digest of a file's bytes, read in 1 MiB blocks (bounded work:
  it never parses anything).
- ``check_file(path, expected, fix)``: raises ``CorruptFile`` naming the file and what to do
  when the digest differs (or the file is missing or unreadable).
- ``seal(payload)`` (or ``seal_header`` then the payload) / ``unseal(blob, path, fix)``: a
  payload framed as MAGIC + digest + bytes,
  for single files that carry their own digest (checkpoints); ``unseal`` returns the payload
  or raises ``CorruptFile``.

Folders of several files (prepared data, sharded checkpoints) keep their files' digests in a
sealed JSON manifest (``write_manifest`` / ``read_manifest``), written with the files and made
visible with them by one folder rename (``core.atomic``), so file and digest can never disagree
after a crash. Each folder kind keeps its own manifest fields; ``read_manifest`` asks only for
a ``files`` mapping.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from core.atomic import write_bytes

MAGIC = b"SASREC-SEALED-V1\n"
_DIGEST_BYTES = 32
_BLOCK = 1 << 20


class CorruptFile(Exception):
    """A file whose bytes do not match the digest written with it; the message names the file
    and what to do, and is meant to be printed as the one error line."""

    def __init__(self, path: str | Path, problem: str, fix: str):
        self.path = Path(path)
        super().__init__(f"{path}: {problem}: the file is corrupted; {fix}")


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def check_file(path: str | Path, expected: str, fix: str) -> None:
    try:
        actual = sha256_file(path)
    except OSError as err:
        raise CorruptFile(path, f"cannot be read ({err.strerror or err})", fix) from None
    if actual != expected:
        raise CorruptFile(path, "digest mismatch", fix)


def seal_header(payload: bytes | memoryview) -> bytes:
    """What ``seal`` puts before ``payload``: write it, then the payload, to seal a large payload
    without a second copy of it in memory."""
    return MAGIC + hashlib.sha256(payload).digest()


def seal(payload: bytes) -> bytes:
    return seal_header(payload) + payload


def unseal(blob: bytes, path: str | Path, fix: str) -> memoryview:
    head = len(MAGIC) + _DIGEST_BYTES
    if len(blob) < head or not blob.startswith(MAGIC):
        raise CorruptFile(path, "no integrity header (truncated, or not written by this tool)", fix)
    view = memoryview(blob)
    if hashlib.sha256(view[head:]).digest() != bytes(view[len(MAGIC):head]):
        raise CorruptFile(path, "digest mismatch", fix)
    return view[head:]


def write_manifest(manifest: dict, path: str | Path) -> None:
    """``manifest`` (JSON, with a ``files`` mapping) sealed and written atomically to ``path``."""
    write_bytes(seal(json.dumps(manifest, indent=1).encode()), path)


def read_manifest(path: str | Path, fix: str) -> dict:
    """The manifest ``write_manifest`` wrote at ``path``, its seal checked before JSON parses it;
    ``CorruptFile`` when it cannot be read, fails its digest or is not a manifest (a JSON object
    with a ``files`` mapping). The caller checks its own fields and says what a missing one means."""
    try:
        blob = Path(path).read_bytes()
    except OSError as err:
        raise CorruptFile(path, f"cannot be read ({err.strerror or err})", fix) from None
    try:
        manifest = json.loads(bytes(unseal(blob, path, fix)))
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CorruptFile(path, "not a manifest of this tool", fix)
    return manifest
