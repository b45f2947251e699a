"""Checkpoints and RNG state; written atomically through ``core.atomic`` (a crash mid-write
leaves the old file), so ``--resume`` always finds a whole checkpoint.

Every checkpoint carries its own SHA-256 digest (``core.integrity.seal``: a header, the digest,
then the ``torch.save`` bytes), checked before anything is unpickled: a flipped byte, a
truncation or garbage is refused with ``CorruptFile`` (one line naming the file and ``fix``),
never trusted and never a traceback. A checkpoint written before checkpoints carried a digest
(a bare ``torch.save`` zip) cannot be checked and is refused the same way, with a line saying so.
Readers: the run folder (``--resume``: checkpoint.pt and best.pt; the test: best.pt), ``load_run``
(best.pt, for ``core.recommend`` and experiments/recommend.py) and kernels_bench's ``--checkpoint``.
There are no ``torch.distributed.checkpoint`` folders: under torchrun rank 0 writes these same
files (catalog-parallel ranks gather the item table first), so the one digest covers them too.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_file, write_json, write_text  # noqa: F401  (re-exported)
from core.integrity import CorruptFile, seal_header, unseal

_TORCH_ZIP = b"PK\x03\x04"  # what torch.save writes: a checkpoint from before the digest
DEFAULT_FIX = "it cannot be used: train the run again"


class UncheckedFile(CorruptFile):
    """A checkpoint without the digest header that torch.save alone wrote (before the digest)."""

    def __init__(self, path: str | Path, fix: str):
        self.path = Path(path)
        Exception.__init__(self, f"{path}: written without an integrity digest (before checkpoints "
                                 f"carried one, or not by this tool), so it cannot be checked; {fix}")


def save_torch(obj, path: Path) -> None:
    """``torch.save`` made atomic, sealed with its digest (``core.integrity.seal``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getbuffer()
    with atomic_file(path) as f:  # header, then the bytes: one copy of the checkpoint in memory
        f.write(seal_header(payload))
        f.write(payload)


def _payload(path: Path, fix: str) -> io.BytesIO:
    """The checked ``torch.save`` bytes of a checkpoint, as a file positioned at them (sharing
    the bytes read: one copy of the checkpoint in memory), or ``CorruptFile``."""
    try:
        blob = Path(path).read_bytes()
    except OSError as err:
        raise CorruptFile(path, f"cannot be read ({err.strerror or err})", fix) from None
    if blob.startswith(_TORCH_ZIP):
        raise UncheckedFile(path, fix)
    payload = unseal(blob, path, fix)
    f = io.BytesIO(blob)
    f.seek(len(blob) - len(payload))
    return f


def load_torch(path: Path, map_location: torch.device | str = "cpu", *, fix: str = DEFAULT_FIX):
    """Loads a checkpoint written by ``save_torch`` (our own file: full unpickling allowed) once
    its digest matches; raises ``CorruptFile`` (one line: the file, what is wrong, ``fix``)."""
    return torch.load(_payload(path, fix), map_location=map_location, weights_only=False)


def check_torch(path: Path, *, fix: str = DEFAULT_FIX) -> None:
    """Raises ``CorruptFile`` as ``load_torch`` would, without unpickling (a cheap check)."""
    _payload(path, fix)


def rng_state() -> dict:
    """Every RNG a training epoch draws from: torch (dropout), CUDA, numpy, python."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restores what ``rng_state`` saved; the CUDA part only where CUDA exists now too."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
