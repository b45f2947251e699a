"""Atomic run-folder writes: checkpoints, JSON and text files survive a crash mid-write.

Every writer puts the bytes in a temporary file in the target's directory and then
``os.replace``s it, so a reader (or ``--resume``) sees either the old file or the new one,
never half of one.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone makes files 0600


def _atomic_write(path: Path, write) -> None:
    """Calls ``write(file_object)`` on a temp file beside ``path``, then renames it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj, path: Path) -> None:
    """``torch.save`` made atomic."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: Path, map_location: torch.device | str = "cpu"):
    """Loads a checkpoint written by ``save_torch`` (our own file: full unpickling allowed)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def write_json(obj, path: Path) -> None:
    """Pretty JSON written atomically (metrics.json)."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    _atomic_write(path, lambda f: f.write(data))


def write_text(text: str, path: Path) -> None:
    """A text file written atomically (config.gin, history.jsonl)."""
    data = text.encode()
    _atomic_write(path, lambda f: f.write(data))


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
