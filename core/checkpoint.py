"""Checkpoints and RNG state; written atomically through ``core.atomic`` (a crash mid-write
leaves the old file), so ``--resume`` always finds a whole checkpoint."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_file, write_json, write_text  # noqa: F401  (re-exported)


def save_torch(obj, path: Path) -> None:
    """``torch.save`` made atomic."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def load_torch(path: Path, map_location: torch.device | str = "cpu"):
    """Loads a checkpoint written by ``save_torch`` (our own file: full unpickling allowed)."""
    return torch.load(path, map_location=map_location, weights_only=False)


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
