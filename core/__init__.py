"""SASRec over the whole item catalog with full softmax CE, Cut Cross-Entropy and the project's own
losses: data, model, losses, training, evaluation and recommendations.

    import core
    data = core.load_sequences("data/beauty5core")          # prepared HDF5 shards
    metrics = core.train(data, "runs/mine", loss_fn=core.cce, schedule=core.Schedule(epochs=20))
    run = core.load_run("runs/mine")                          # model + data + metrics
    recs = core.recommend(run, k=10)                          # top-k in the catalog's raw ids

Names load on first use (``__getattr__`` below), so ``import core`` is cheap and imports no
triton: the CUDA kernels load when a CUDA loss is first called, and everything trains on a CPU.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_EXPORTS = {
    "SASRec": "core.model",
    "IGNORE_INDEX": "core.losses",
    "ce": "core.losses",
    "cce": "core.losses",
    "flash_ce": "core.losses",
    "flex_ce": "core.losses",
    "sampled_ce": "core.losses",
    "loss_name": "core.losses",
    "train": "core.training",
    "Optim": "core.training",
    "Schedule": "core.training",
    "Evaluation": "core.training",
    "StepSettings": "core.training",
    "Parallel": "core.training",
    "TrainingError": "core.training",
    "evaluate": "core.evaluation",
    "load_run": "core.training",
    "recommend": "core.recommendations",
    "item_embeddings": "core.recommendations",
    "load_sequences": "core.data.shards",
    "prepare_dataset": "core.data.prepare",
    "write_synthetic": "core.data.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
