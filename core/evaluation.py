"""Full-catalog evaluation of a model (and of the popularity baseline) on one split.

Both go through the same loop, so the baseline sees exactly the users, targets and history
masking the model sees: it differs only in how a batch of users is scored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from core.data.batching import DeviceSequences, eval_batches, history
from core.data.shards import SequenceData
from core.metrics import RankingMetrics, popularity_scores
from core.parallel.collectives import DistContext, all_gather_rows, all_reduce

# (B, n_items) fp32 scores per batch are the evaluation's big buffer: bound it at 2**28 floats
# (1 GiB), so a 10M-item catalog gets batches of ~26 users and a 20k-item one the cap of 4096.
_SCORE_BUDGET = 2**28
_MAX_EVAL_BATCH = 4096


def default_eval_batch_size(n_items: int) -> int:
    """Users per evaluation batch such that the score matrix stays near 1 GiB."""
    return max(1, min(_MAX_EVAL_BATCH, _SCORE_BUDGET // n_items))


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; full fp32 elsewhere (CPU bf16 is slow and not the protocol)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_train_users(data: SequenceData) -> int:
    """N of Surprisal: users with a non-empty training sequence (all of them after leave-one-out)."""
    return int((data.lengths() - 2 > 0).sum())


@torch.no_grad()
def rank_split(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    seqs: DeviceSequences,
    *,
    split: str,
    batch_size: int,
    max_len: int,
    mask_history: bool,
    ks: Sequence[int],
    item_user_counts: np.ndarray,
    n_train_users: int,
    users: torch.Tensor | None = None,
    reduce: Callable[[RankingMetrics], None] | None = None,
) -> dict[str, float]:
    """Ranks the whole catalog for every user of ``split`` ("valid" or "test").

    ``score_fn(inputs (B, L)) -> (B, n_items)`` fp32 scores; they are masked in place.
    ``item_user_counts`` (``SequenceData.train_item_user_counts()``) and ``n_train_users``
    (``count_train_users``) feed Surprisal; callers compute them once per run, not per call.
    ``users`` (default: all) and ``reduce`` (called on the metrics before ``compute``) let
    each rank of a distributed run rank its share of the users and combine the results
    exactly (``eval_shard``, ``reduce_metrics``).
    """
    metrics = RankingMetrics(
        n_items=seqs.n_items, ks=ks, item_user_counts=item_user_counts, n_train_users=n_train_users
    )
    batches = eval_batches(seqs, split=split, batch_size=batch_size, max_len=max_len, users=users)
    for batch_users, inputs, targets in batches:
        scores = score_fn(inputs)  # (B, n_items)
        seen = history(seqs, batch_users, split=split) if mask_history else None
        metrics.update(scores, targets, history=seen)
    if reduce is not None:
        reduce(metrics)
    return metrics.compute()


def score_catalog(model: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                  inputs: torch.Tensor, *, amp: bool) -> torch.Tensor:
    """(B, n_items) fp32 scores of the next item after each row of ``inputs`` (B, L).

    Evaluation and ``core.recommend`` both score through here. Scores are fp32 even under
    bf16 training: bf16 scores tie often, and ties count in the target's favour (rank = 1 +
    strictly higher), which would inflate every metric.
    """
    with autocast(inputs.device, amp):
        last = forward(inputs)[:, -1]  # (B, D): left padding puts the newest item last
    return last.float() @ model.catalog().float().T  # (B, n_items)


def evaluate_model(
    model: torch.nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    seqs: DeviceSequences,
    *,
    amp: bool,
    **rank_args,
) -> dict[str, float]:
    """Metrics of ``model``; ``forward`` is the model or its compiled version.

    ``rank_args`` are ``rank_split``'s keyword arguments (split, batch_size, ...).
    """
    was_training = model.training
    model.eval()
    try:
        return rank_split(lambda inputs: score_catalog(model, forward, inputs, amp=amp), seqs, **rank_args)
    finally:
        model.train(was_training)


def evaluate_popularity(seqs: DeviceSequences, **rank_args) -> dict[str, float]:
    """Most-popular baseline (distinct training users per item), ranked like the model."""
    popular = popularity_scores(rank_args["item_user_counts"])  # (n_items,) on the CPU

    def score(inputs: torch.Tensor) -> torch.Tensor:
        nonlocal popular
        popular = popular.to(inputs.device)  # once: a no-op after the first batch
        # A fresh (B, n_items) copy: RankingMetrics masks history in place.
        return popular.expand(inputs.shape[0], -1).clone()

    return rank_split(score, seqs, **rank_args)


def evaluate(run, data: SequenceData | None = None, *, split: str = "test", ks: Sequence[int] = (10,),
             mask_history: bool = True, batch_size: int | None = None) -> dict[str, float]:
    """Full-catalog metrics of a trained model on ``split`` ("valid" or "test"): the public API.

    ``run`` is ``core.load_run(...)``'s result, or a model with ``data`` its SequenceData.
    Same protocol as training's evaluation (history masked by default, fp32 scores, bf16
    autocast on CUDA), so a run's best model gives back its metrics.json's numbers.
    """
    model, data = (run.model, run.data) if data is None else (run, data)
    device = next(model.parameters()).device
    seqs = DeviceSequences.from_data(data, device)
    return evaluate_model(
        model, model, seqs, amp=device.type == "cuda", split=split, max_len=model.max_len,
        batch_size=batch_size or default_eval_batch_size(data.n_items), mask_history=mask_history,
        ks=ks, item_user_counts=data.train_item_user_counts(), n_train_users=count_train_users(data))


# --- across ranks -----------------------------------------------------------------------------
# Rank r ranks the global evaluation batches r, r + K, r + 2K, ...; the per-batch float64 sums
# are gathered and summed in the global batch order, and the Coverage masks are OR-ed, so the
# metrics equal a 1-rank evaluation bit for bit (same batches, same additions in the same order).


def eval_shard(n_users: int, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """Users rank ``rank`` evaluates: the global batches rank, rank + K, ... concatenated.

    ``eval_batches`` over these users with the same ``batch_size`` yields exactly those global
    batches (every batch but the globally last is full, and that one is this rank's last), so
    each batch's sums are those of a 1-rank evaluation. (n,) int64.
    """
    starts = range(rank * batch_size, n_users, world * batch_size)
    parts = [torch.arange(lo, min(lo + batch_size, n_users)) for lo in starts]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def reduce_metrics(ctx: DistContext, metrics: RankingMetrics) -> None:
    """Replaces each rank's ``metrics`` (filled over ``eval_shard``'s users) by the global ones.

    Per-batch sums are gathered and put back in global batch order (batch g was ranked by rank
    g % K as its (g // K)-th), then summed one after another as one process would; the
    Coverage masks are OR-ed. The result equals a 1-rank evaluation bit for bit.
    """
    if not ctx.enabled:
        return
    rows, seen = metrics.state()  # (n_local, C) float64, (len(ks), n_items) bool
    counts = [int(n) for n in all_reduce(
        ctx, torch.zeros(ctx.world, dtype=torch.int64).index_fill_(0, torch.tensor(ctx.rank), len(rows)))]
    gathered = all_gather_rows(ctx, rows, counts)
    ordered = [gathered[g % ctx.world][g // ctx.world] for g in range(sum(counts))]
    union = all_reduce(ctx, seen.to(torch.uint8), op=dist.ReduceOp.MAX).bool()
    metrics.load_state(torch.stack(ordered) if ordered else rows[:0], union)


def eval_args(ctx: DistContext, n_users: int, batch_size: int) -> dict:
    """Extra ``rank_split`` arguments for this rank: its users and the exact reduction ({} on 1 rank)."""
    if not ctx.enabled:
        return {}
    return {"users": eval_shard(n_users, batch_size, ctx.rank, ctx.world),
            "reduce": lambda metrics: reduce_metrics(ctx, metrics)}
