"""Full-catalog ranking metrics @k: HitRate, NDCG, MRR, Coverage, Surprisal.

Definitions (DESIGN.md, "Evaluation protocol"), one held-out target per user, rank from 1:
- rank = 1 + number of items scoring strictly higher than the target (ties favour the target);
- HitRate@k = share of users with rank <= k;
- NDCG@k = 1 / log2(1 + rank) if rank <= k, else 0;
- MRR@k = 1 / rank if rank <= k, else 0;
- Coverage@k = distinct items in all users' top-k lists / n_items;
- Surprisal@k (RePlay): s_j = -log2(pop_j / N) / log2(N), pop_j = distinct training users with
  item j, N = training users, s_j = 1 where pop_j = 0; per user the mean of s_j over the top-k,
  then the mean over users.

Everything is batched on the scores' device; sums are kept in float64 so that the result does
not depend on the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _as_int64_tensor(values, name: str) -> torch.Tensor:
    """Accepts a numpy array or tensor of counts; returns a CPU int64 tensor."""
    tensor = torch.as_tensor(values)
    if tensor.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")
    return tensor.detach().to("cpu", torch.int64)


def popularity_scores(item_counts) -> torch.Tensor:
    """Most-popular baseline scores for the catalog columns (item ids 1..n), (n_items,) float32.

    ``item_counts`` is indexed by item id (index 0 = padding, ignored), e.g. the output of
    ``SequenceData.train_item_user_counts()``. The score is ``n_items - popularity rank``:
    more popular items score higher, equal counts are broken by the lower item id, and all
    scores are distinct integers (exact in float32 up to 2**24 items). Distinct scores matter
    because ties favour the target in ``RankingMetrics``, which would flatter the baseline.
    """
    counts = _as_int64_tensor(item_counts, "item_counts")[1:]  # (n_items,)
    n_items = counts.numel()
    order = torch.sort(-counts, stable=True).indices  # most popular first, lower id on ties
    scores = torch.empty(n_items, dtype=torch.float32)
    scores[order] = torch.arange(n_items, 0, -1, dtype=torch.float32)
    return scores


def item_surprisal(item_user_counts, *, n_train_users: int) -> torch.Tensor:
    """Per-item surprisal s_j for item ids 1..n, (n_items,) float64 (RePlay's definition)."""
    if n_train_users < 2:
        raise ValueError(f"Surprisal needs n_train_users >= 2 (log2(N) divides), got {n_train_users}")
    pop = _as_int64_tensor(item_user_counts, "item_user_counts")[1:].to(torch.float64)
    if (pop > n_train_users).any():
        raise ValueError("item_user_counts has an item with more users than n_train_users")
    log_n = math.log2(n_train_users)
    # pop == 0 -> clamped to 1 -> s = log2(N) / log2(N) = 1, which is exactly RePlay's rule
    return -torch.log2(pop.clamp(min=1) / n_train_users) / log_n


class RankingMetrics:
    """Accumulates full-catalog ranking metrics over batches of users.

    ``item_user_counts`` (n_items + 1,) is indexed by item id, as returned by
    ``SequenceData.train_item_user_counts()``; ``n_train_users`` is N in Surprisal (the number
    of users with a training sequence).
    """

    def __init__(
        self,
        *,
        n_items: int,
        ks: Sequence[int] = (10,),
        item_user_counts,
        n_train_users: int,
    ):
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or min(self.ks) < 1 or max(self.ks) > n_items:
            raise ValueError(f"every k must be in [1, n_items={n_items}], got {self.ks}")
        self.n_items = n_items
        surprisal = item_surprisal(item_user_counts, n_train_users=n_train_users)
        if surprisal.numel() != n_items:
            raise ValueError(
                f"item_user_counts has {surprisal.numel() + 1} entries, expected n_items + 1 = {n_items + 1}"
            )
        self._surprisal_cpu = surprisal
        self._surprisal = surprisal
        self.reset()

    def reset(self) -> None:
        """Forgets every accumulated user."""
        self._n_users = 0
        self._sums: dict[str, torch.Tensor] = {}
        self._seen: dict[int, torch.Tensor] = {}
        # One (n_columns,) float64 row per update: the batch's sums, kept so that ranks that
        # each ranked some batches can rebuild the single-process sums bit for bit (``state``).
        self._batch_rows: list[torch.Tensor] = []

    def _columns(self) -> list[str]:
        """The summed quantities, in the order of ``state()``'s columns (the last: users)."""
        return [f"{name}@{k}" for k in self.ks for name in ("HitRate", "NDCG", "MRR", "Surprisal")] + ["users"]

    def _add(self, key: str, value: torch.Tensor) -> None:
        """Adds a float64 scalar to a running device-side sum (no host sync per batch)."""
        self._sums[key] = self._sums[key] + value if key in self._sums else value

    @torch.no_grad()
    def update(
        self,
        scores: torch.Tensor,
        targets: torch.Tensor,
        history: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Adds a batch: scores (B, n_items) for item ids 1..n, targets (B,) item ids 1..n.

        ``history`` = (rows, items): item ids (1..n) that row ``rows`` (0..B-1) has already seen;
        they are set to -inf before ranking, the target too when it is among them (as RecBole
        does: a re-consumed target then counts as a miss). ``None`` ranks the whole catalog.
        To avoid a second (B, n_items) buffer the masking is done IN PLACE on ``scores``.
        Compare scores in fp32: bf16 scores create ties, and ties count in the target's favour.
        """
        B, V = scores.shape
        if V != self.n_items:
            raise ValueError(f"scores have {V} columns, expected n_items={self.n_items}")
        if targets.shape != (B,):
            raise ValueError(f"targets must have shape ({B},), got {tuple(targets.shape)}")
        device = scores.device
        if torch.isnan(scores).any():  # NaN compares False to everything: it would rank first
            raise ValueError("scores contain NaN: the model diverged or the inputs are broken")
        if self._surprisal.device != device:
            self._surprisal = self._surprisal_cpu.to(device)
        targets = targets.to(device=device, dtype=torch.int64)
        if history is not None:
            rows, items = history
            scores[rows.to(device), items.to(device) - 1] = float("-inf")

        # rank = 1 + #(items strictly above the target)
        target_scores = scores.gather(1, (targets - 1)[:, None])  # (B, 1)
        rank = 1 + (scores > target_scores).sum(dim=1).to(torch.float64)  # (B,)

        k_max = max(self.ks)
        top_scores, top_cols = scores.topk(k_max, dim=1)  # (B, k_max), best first
        # A top-k entry at -inf is a masked item (only when fewer than k items are unmasked):
        # it is not a recommendation, so it counts for neither Coverage nor Surprisal.
        top_valid = top_scores > float("-inf")  # (B, k_max)
        top_surprisal = self._surprisal[top_cols]  # (B, k_max) float64

        row: dict[str, torch.Tensor] = {}
        for k in self.ks:
            hit = rank <= k  # (B,)
            row[f"HitRate@{k}"] = hit.to(torch.float64).sum()
            row[f"NDCG@{k}"] = torch.where(hit, 1.0 / torch.log2(1.0 + rank), 0.0).sum()
            row[f"MRR@{k}"] = torch.where(hit, 1.0 / rank, 0.0).sum()

            valid = top_valid[:, :k]  # (B, k)
            n_valid = valid.sum(dim=1).clamp(min=1).to(torch.float64)  # (B,)
            per_user = (top_surprisal[:, :k] * valid).sum(dim=1) / n_valid  # (B,)
            row[f"Surprisal@{k}"] = per_user.sum()

            if k not in self._seen:
                self._seen[k] = torch.zeros(self.n_items, dtype=torch.bool, device=device)
            self._seen[k][top_cols[:, :k][valid]] = True
        for key, value in row.items():
            self._add(key, value)
        self._n_users += B
        row["users"] = torch.tensor(float(B), dtype=torch.float64, device=device)
        self._batch_rows.append(torch.stack([row[c] for c in self._columns()]))

    def state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-update sums (n_updates, n_columns) float64, recommended items (len(ks), n_items) bool).

        What a distributed evaluation exchanges (``core.evaluation.reduce_metrics``):
        the rows are each batch's sums in update order, the last column its user count; the
        mask says which items appeared in some top-k (Coverage). Both on CPU.
        """
        n_cols = len(self._columns())
        rows = (torch.stack(self._batch_rows).cpu() if self._batch_rows
                else torch.zeros(0, n_cols, dtype=torch.float64))
        seen = torch.stack([self._seen[k].cpu() if k in self._seen
                            else torch.zeros(self.n_items, dtype=torch.bool) for k in self.ks])
        return rows, seen

    def load_state(self, rows: torch.Tensor, seen: torch.Tensor) -> None:
        """Replaces the accumulated users by ``state()``-shaped ``rows`` and ``seen``.

        The rows are summed in their order, one after another, exactly as ``update`` sums
        batches: rows from several ranks, put back into the single-process batch order, give
        the single-process result bit for bit.
        """
        columns = self._columns()
        if rows.ndim != 2 or rows.shape[1] != len(columns) or seen.shape != (len(self.ks), self.n_items):
            raise ValueError(f"load_state: rows must be (n, {len(columns)}) and seen "
                             f"({len(self.ks)}, {self.n_items}), got {tuple(rows.shape)}, {tuple(seen.shape)}")
        self.reset()
        for row in rows.to(torch.float64):
            for key, value in zip(columns[:-1], row[:-1]):
                self._add(key, value)
            self._batch_rows.append(row)
        self._n_users = int(rows[:, -1].sum()) if len(rows) else 0
        self._seen = {k: seen[i].clone() for i, k in enumerate(self.ks)}

    def compute(self) -> dict[str, float]:
        """Returns {f"HitRate@{k}", f"NDCG@{k}", f"MRR@{k}", f"Coverage@{k}", f"Surprisal@{k}"}."""
        if self._n_users == 0:
            raise ValueError("RankingMetrics.compute() before any update(): no users to average")
        out: dict[str, float] = {}
        for k in self.ks:
            for name in ("HitRate", "NDCG", "MRR"):
                out[f"{name}@{k}"] = self._sums[f"{name}@{k}"].item() / self._n_users
            out[f"Coverage@{k}"] = self._seen[k].sum().item() / self.n_items
            out[f"Surprisal@{k}"] = self._sums[f"Surprisal@{k}"].item() / self._n_users
        return out
