"""Top-k recommendations in the catalog's own ids, and item embeddings for an ANN index.

    run = core.load_run("runs/beauty5core_cce")
    recs = core.recommend(run, k=10)                 # DataFrame: user, rank, item, score
    vectors, ids = core.item_embeddings(run)         # (n_items, D) float32, raw item ids

What the model sees (``context``):
- ``"full"`` (default, the real use): every interaction the data holds for the user, so the
  recommendation is for the user's next item after all of them;
- ``"test"``: the training sequence plus the validation target, exactly what evaluation ranks
  for the test split, so these top-k lists are the ones the test metrics were computed from
  (tests/test_recommend.py checks that).
With ``mask_history`` (default) every item in the context is excluded, as in evaluation.
Users are scored in batches on the run's device (the GPU when the model is there).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch

from core.data.batching import DeviceSequences, context_windows, history
from core.evaluation import (
    DEFAULT_CHUNK,
    catalog_top,
    default_eval_batch_size,
    model_scores,
    sharded_scoring,
)

CONTEXTS = ("full", "test")


class RecommendError(ValueError):
    """Bad request (unknown users, k out of range, ...); the message is one line."""


def _model_and_data(run, data=None):
    """(model, data) from a run (``core.load_run``'s result) or from a model and its data."""
    if data is None:
        return run.model, run.data
    return run, data


def user_index(data, users: Iterable | None) -> np.ndarray:
    """Internal user indices (n,) int64 for raw user ids ``users`` (None: every user, in order)."""
    if users is None:
        return np.arange(data.n_users, dtype=np.int64)
    if isinstance(users, (str, bytes)) or not isinstance(users, Iterable):  # '12' is not users 1, 2
        raise RecommendError(f"users must be a list of raw user ids (e.g. [{users!r}]), "
                             f"got the {type(users).__name__} {users!r}")
    wanted = np.asarray(list(users)).astype(str)
    known = np.asarray(data.user_ids).astype(str)
    order = np.argsort(known, kind="stable")
    pos = np.searchsorted(known, wanted, sorter=order)
    pos = np.minimum(pos, len(known) - 1)
    found = known[order[pos]] == wanted
    if not found.all():
        missing = wanted[~found]
        raise RecommendError(f"{len(missing)} user id(s) not in the data the model trained on, "
                             f"e.g. {', '.join(missing[:3])}")
    return order[pos].astype(np.int64)


@torch.no_grad()
def top_k(model: torch.nn.Module, seqs: DeviceSequences, users: torch.Tensor, *, k: int,
          mask_history: bool = True, context: str = "full", batch_size: int | None = None,
          amp: bool = False, chunk_size: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(items (U, k) int64 ids 1..n_items, scores (U, k) fp32) for internal ``users`` (U,).

    Best first; equal scores list the lower item id first (evaluation's tie rule). Masked
    items score -inf; they appear only when fewer than k items are left unmasked.
    A model holding one rank's shard of a catalog-parallel run (``load_run(..., ctx=...)``
    under torchrun): every rank must call it with the same users; each scores its shard and
    the per-rank top-k are merged (``core.evaluation.sharded_scoring``), so every rank gets
    the one-process lists.
    """
    if context not in CONTEXTS:
        raise RecommendError(f"context must be one of {CONTEXTS}, got {context!r}")
    if not 1 <= k <= seqs.n_items:
        raise RecommendError(f"k must be in [1, {seqs.n_items}] (the catalog), got {k}")
    split = "full" if context == "full" else "test"
    # evaluation's batch, fewer users when k is large: the running top-k is (B, k) (x4 in the merge)
    batch_size = batch_size or max(1, min(default_eval_batch_size(seqs.n_items), 2**24 // k))
    was_training = model.training
    model.eval()
    try:
        with sharded_scoring(model) as shard:  # None: the model holds the whole catalog
            return _top_k(model, seqs, users, k=k, mask_history=mask_history, split=split,
                          batch_size=batch_size, amp=amp, chunk_size=chunk_size, shard=shard)
    finally:
        model.train(was_training)


def _top_k(model, seqs, users, *, k, mask_history, split, batch_size, amp, chunk_size, shard):
    """``top_k``'s loop over batches of users, the model in eval mode (``shard``: this rank's)."""
    items, scores = [], []
    score_fn = model_scores(model, model, amp=amp, offset=0 if shard is None else shard.lo)
    for lo in range(0, len(users), batch_size):
        u = users[lo: lo + batch_size].to(seqs.device)  # (B,)
        inputs = context_windows(seqs, u, split=split, max_len=model.max_len)  # (B, L)
        seen = history(seqs, u, split=split) if mask_history else None
        # Streaming over catalog chunks, as evaluation ranks: the same scores and tie rule
        # (equal scores: lower item id first), never a (B, n_items) matrix.
        top = catalog_top(score_fn(inputs), len(u), n_items=seqs.n_items, k=k, targets=None,
                          seen=seen, device=seqs.device, chunk_size=chunk_size, shard=shard)
        items.append(top.cols + 1)
        scores.append(top.values)
    if not items:
        empty = torch.zeros((0, k), device=seqs.device)
        return empty.long(), empty
    return torch.cat(items), torch.cat(scores)


def recommend(run, data=None, *, users: Iterable | None = None, k: int = 10,
              mask_history: bool = True, context: str = "full",
              batch_size: int | None = None) -> pd.DataFrame:
    """Top-``k`` items per user in raw ids: a DataFrame with columns user, rank, item, score.

    ``run`` is ``core.load_run(...)``'s result (or a model, with ``data`` its SequenceData).
    ``users``: raw user ids (default: every user of the data). Rows are per user, best first;
    an item masked away (possible only when fewer than k remain) is left out.
    """
    model, data = _model_and_data(run, data)
    # a rank's shard (load_run with ctx, under torchrun): every rank calls it with the same
    # users, scores its shard, and the ranks' top-k merge (top_k): the one-process lists
    device = next(model.parameters()).device
    seqs = DeviceSequences.from_data(data, device)
    index = user_index(data, users)
    items, scores = top_k(model, seqs, torch.from_numpy(index), k=k, mask_history=mask_history,
                          context=context, batch_size=batch_size, amp=device.type == "cuda")
    items, scores = items.cpu().numpy(), scores.float().cpu().numpy()
    keep = np.isfinite(scores)  # (U, k)
    rows, ranks = np.nonzero(keep)
    return pd.DataFrame({
        "user": np.asarray(data.user_ids)[index][rows],
        "rank": ranks + 1,
        "item": np.asarray(data.item_ids)[items[rows, ranks]],
        "score": scores[rows, ranks],
    })


def item_embeddings(run, data=None) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n_items, D) float32, raw item ids (n_items,)): the catalog the model scores with.

    From a model holding one rank's shard of a catalog-parallel run (``load_run(..., ctx=...)``
    under torchrun): that rank's items only, with their ids (an index per shard, no rank
    holding the whole table).

    A user's score for an item is the dot product of the model's last hidden state with the
    item's vector, so an inner-product ANN index over these vectors serves the same ranking.
    """
    model, data = _model_and_data(run, data)
    vectors = model.catalog().detach().float().cpu().numpy()
    table = getattr(model, "item_emb", None)
    if hasattr(table, "lo"):  # a rank's shard (load_run with ctx, under torchrun): its items only
        return vectors, np.asarray(data.item_ids)[1 + table.lo : 1 + table.hi]
    return vectors, np.asarray(data.item_ids)[1:]
