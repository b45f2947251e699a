"""Data pipeline: raw readers -> k-core filter -> leave-one-out sequences -> HDF5 shards -> batches.

Prepare once with ``tools/prepare_data.py`` (or ``prepare(Recipe(...), folder)``, the one function
behind it and behind ``core.dataset_config.dataset``), then ``load_sequences(folder)``: a
``SequenceData`` with the raw ids (internal user u <-> ``user_ids[u]``, internal item i <->
``item_ids[i]``), and ``DeviceSequences.from_data(data, device)`` for batches. The
batching names are imported lazily, so preparing data never pays torch's import time.
"""

import importlib

from core.data.prepare import Recipe, prepare, prepare_dataset
from core.data.shards import FORMAT_VERSION, DataFormatError, SequenceData, load_sequences, write_shards
from core.data.synthetic import PRESETS, generate, write_synthetic

_BATCHING = ("Batch", "DeviceSequences", "TrainBatches", "context_windows", "eval_batches", "history",
             "training_users")

__all__ = [
    "FORMAT_VERSION",
    "PRESETS",
    "DataFormatError",
    "Recipe",
    "SequenceData",
    "generate",
    "load_sequences",
    "prepare",
    "prepare_dataset",
    "write_shards",
    "write_synthetic",
    *_BATCHING,
]


def __getattr__(name: str):
    if name in _BATCHING:
        return getattr(importlib.import_module("core.data.batching"), name)
    raise AttributeError(f"module 'core.data' has no attribute {name!r}")
