"""Several processes as one run, below both ``core.losses`` and ``core.training``.

- ``collectives``: the process group (``DistContext``, ``init_from_env``), the collectives and
  ``shard_bounds``;
- ``shares``: a global batch split over ranks, carrying every rank's share sizes
  (``ShardedBatch``), and the data-parallel loss weighting;
- ``catalog``: the item table split by item range (``ShardedItemEmbedding``, part of the model)
  and the catalog-parallel softmax cross-entropy over it.

Nothing here imports ``core.training``; the training loop's view of the ranks is
``core.training.ranks.Ranks``, and a command's process start and exit is ``experiments/joined.py``.
"""
