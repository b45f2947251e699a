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

Tie rule (both paths). Ranking counts ties in the target's favour (above). The top-k lists
(Coverage, Surprisal) order items by score, and EQUAL SCORES BY THE LOWER ITEM ID FIRST; this
fixes both which tied items enter a top-k at its boundary and the order inside it (each k of
``ks`` takes a prefix). ``torch.topk`` does not define either (its docs leave the order of equal
elements unspecified; on the CPU it selects by value alone, on CUDA a radix select fills the
boundary in index order but then sorts the k results unstably), so the dense ``update`` and the
streaming path both apply the rule explicitly: ``torch.topk(k + 1)`` finds the values, a tie
across the k-th place is seen from the (k+1)-th value, and only such rows are redone with a
stable sort (``exact_top``); the k results are then put in (score desc, id asc) order
(``canonical_order``). Ties among masked items (-inf) do not matter: they are no
recommendation.

Streaming state (``CatalogTop``; see ``core.evaluation``'s docstring for the scan). Per user:
the best k scores and their catalog columns (rule above), the target's score (-inf when masked,
taken from the very score buffer the top-k came from), whether this part of the catalog held the
target, and ``tie``: the k-th score of any catalog part whose own top-k had a tie across its
k-th place (else -inf). ``merge_top`` combines the states of two disjoint parts of the catalog
(two chunks, or two ranks' catalog shards) into the state of their union; it is associative
and commutative. From the final state rank = 1 + #(top-k scores > target score): exact whenever
rank <= k, and k + 1 (a miss at every cut-off) otherwise, which is all HitRate/NDCG/MRR@k for
k <= max(ks) need, so no count over the whole catalog (which would need the target's score
before the scan) is kept. A final state whose ``tie`` equals its k-th score may hold the wrong
tied items (a part chose among ties before the global boundary was known): ``needs_exact``
names those rows, which are then recomputed with ``exact_top``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

NEG_INF = float("-inf")


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


# --- top-k with the tie rule, and the streaming state ----------------------------------------


def canonical_order(values: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(B, n) int64 permutation of each row putting (values, cols) in (value desc, col asc) order.

    Two stable sorts: by column, then by value (descending); small (B, n) lists only.
    """
    by_col = cols.argsort(dim=1, stable=True)
    by_value = values.gather(1, by_col).argsort(dim=1, descending=True, stable=True)
    return by_col.gather(1, by_value)


def _pad_top(values: torch.Tensor, cols: torch.Tensor, k: int, sentinel: int):
    """Pads (B, n < k) lists to k entries with (-inf, ``sentinel``): no recommendation."""
    missing = k - values.shape[1]
    if missing <= 0:
        return values, cols
    B = values.shape[0]
    return (torch.cat([values, values.new_full((B, missing), NEG_INF)], 1),
            torch.cat([cols, cols.new_full((B, missing), sentinel)], 1))


def exact_top(scores: torch.Tensor, k: int, *, lo: int = 0, sentinel: int | None = None):
    """(values (B, k), cols (B, k)) of ``scores`` (B, w) by the tie rule, with a stable sort.

    The reference and the fix-up of rows whose top-k is ambiguous (a full sort of the row:
    slow, used only for those rows). Columns are ``lo`` + position; fewer than k columns are
    padded with (-inf, ``sentinel``) (default ``lo + w``).
    """
    w = scores.shape[1]
    kk = min(k, w)
    values, order = scores.sort(dim=1, descending=True, stable=True)  # equal values: lower col first
    values, cols = values[:, :kk], order[:, :kk] + lo
    return _pad_top(values, cols, k, lo + w if sentinel is None else sentinel)


class ChunkTop(NamedTuple):
    """One part's top-k by value: ``values`` (B, k) desc, ``cols`` (B, k) int64 global columns,
    ``tie`` (B,) the k-th value where a tie crosses the k-th place (-inf otherwise)."""

    values: torch.Tensor
    cols: torch.Tensor
    tie: torch.Tensor


def group_maxima(scores: torch.Tensor, group: int) -> torch.Tensor:
    """(B, G) max of each of ``chunk_top``'s groups of a (B, w) chunk, G = ceil(w / group).

    The first n = w // group groups are strided: group g holds columns g, g + n, g + 2n, ...
    (``group`` of them), so the max is a reduction over the middle axis of a (B, group, n)
    view, which reads rows whole and coalesced (64 contiguous columns reduced innermost ran
    at ~1 TB/s on an H200, issue 21.5). The ``w % group`` columns left over form group n."""
    B, w = scores.shape
    n = w // group
    maxima = scores[:, :n * group].reshape(B, group, n).amax(dim=1)  # (B, n)
    if w % group:
        maxima = torch.cat([maxima, scores[:, n * group:].amax(dim=1, keepdim=True)], 1)
    return maxima


def group_columns(best: torch.Tensor, group: int, w: int) -> torch.Tensor:
    """(B, m * group) chunk columns of the (B, m) groups ``best`` (``group_maxima``'s layout);
    columns of the leftover group past ``w`` are returned as >= w (callers mask them)."""
    n = w // group
    offsets = torch.arange(group, device=best.device)
    strided = best[..., None] + offsets * n  # (B, m, group)
    leftover = n * group + offsets  # the last group: contiguous, maybe past w
    return torch.where(best[..., None] < n, strided, leftover).flatten(1)


def chunk_top(scores: torch.Tensor, k: int, *, lo: int = 0, sentinel: int, group: int = 64) -> ChunkTop:
    """Top-k of a (B, w) fp32 score chunk whose column j is global column ``lo + j``.

    The k values are exact; which tied items fill the k-th place is torch.topk's choice, and
    ``tie`` says where that choice could matter (the (k+1)-th best equals the k-th). ``group``
    > 1: two-stage selection that reads the chunk once more instead of sorting it: the max of
    each group of ``group`` columns (``group_maxima``), the k groups with the best maxima
    (every top-k item lies in one of them: an item outside is <= its group's max <= the k-th
    best max <= the k-th value found), then top-k over those k * group candidates. An item
    outside equal to the k-th value is seen through the (k+1)-th group max and reported in
    ``tie`` as well. Which columns make a group does not change the result (the argument holds
    for any partition), only the speed. Columns beyond ``w`` (never real) become ``sentinel``;
    lists shorter than k are padded with it at -inf.
    """
    B, w = scores.shape
    n_groups = -(-w // group) if group > 1 else w
    if group > 1 and n_groups > k + 1:
        group_max, best = group_maxima(scores, group).topk(k + 1, dim=1)  # (B, k + 1), sorted
        cand_cols = group_columns(best[:, :k], group, w)  # (B, k * group)
        cand = scores.gather(1, cand_cols.clamp(max=w - 1))
        cand = cand.masked_fill(cand_cols >= w, NEG_INF)  # the leftover group's columns past w
        values, pos = cand.topk(k + 1, dim=1)
        cols = cand_cols.gather(1, pos)
        after = torch.maximum(values[:, k], group_max[:, k])  # best value not taken
        values, cols = values[:, :k], cols[:, :k]
    else:
        kk = min(k + 1, w)
        values, cols = scores.topk(kk, dim=1)
        after = values[:, k] if kk > k else values.new_full((B,), NEG_INF)
        values, cols = _pad_top(values[:, :k], cols[:, :k], k, w)
    kth = values[:, k - 1]
    tie = torch.where((kth > NEG_INF) & (after == kth), kth, NEG_INF)
    cols = torch.where(cols < w, cols + lo, sentinel)
    return ChunkTop(values, cols, tie)


class CatalogTop(NamedTuple):
    """The streaming state of a batch of B users over a part of the catalog (module docstring).

    ``values`` (B, k) fp32, best first, ``cols`` (B, k) int64 catalog columns (item id - 1;
    ``n_items`` pads a list with fewer than k real items), ``target`` (B,) fp32 the target's
    score with history masked (-inf where masked or not in this part), ``has_target`` (B,)
    bool, ``tie`` (B,) fp32, ``nan`` (B,) bool: a NaN score was seen in the row.
    """

    values: torch.Tensor
    cols: torch.Tensor
    target: torch.Tensor
    has_target: torch.Tensor
    tie: torch.Tensor
    nan: torch.Tensor

    @classmethod
    def empty(cls, B: int, k: int, *, n_items: int, device) -> CatalogTop:
        """The state of no catalog at all: merging it changes nothing."""
        neg = torch.full((B,), NEG_INF, device=device)
        return cls(torch.full((B, k), NEG_INF, device=device),
                   torch.full((B, k), n_items, dtype=torch.int64, device=device),
                   neg, torch.zeros(B, dtype=torch.bool, device=device), neg.clone(),
                   torch.zeros(B, dtype=torch.bool, device=device))

    def put(self, rows: torch.Tensor, other: CatalogTop) -> CatalogTop:
        """This state with the users ``rows`` replaced by ``other``'s (a fix-up's result)."""
        out = [t.clone() for t in self]
        for t, o in zip(out, other):
            t[rows] = o
        return CatalogTop(*out)


def merge_top(*parts: CatalogTop) -> CatalogTop:
    """The state of the union of disjoint catalog parts (same users, same k): ``merge_top(a, b)``.

    Top-k of all the parts' candidates by (value desc, col asc); the target's score from the
    part that holds it (the others hold -inf); ``tie`` the largest (a tie below the final k-th
    value cannot matter). Associative and commutative, so parts (chunks, catalog shards of
    ranks) may be merged in any grouping and order.
    """
    if len(parts) == 1:
        return parts[0]
    k = parts[0].values.shape[1]
    values = torch.cat([p.values for p in parts], 1)
    cols = torch.cat([p.cols for p in parts], 1)
    order = canonical_order(values, cols)[:, :k]
    has = torch.stack([p.has_target for p in parts], 1)  # (B, n_parts)
    target = torch.where(has, torch.stack([p.target for p in parts], 1), NEG_INF).amax(dim=1)
    return CatalogTop(values.gather(1, order), cols.gather(1, order), target, has.any(dim=1),
                      torch.stack([p.tie for p in parts], 1).amax(dim=1),
                      torch.stack([p.nan for p in parts], 1).any(dim=1))


def needs_exact(top: CatalogTop) -> torch.Tensor:
    """(B,) bool: rows whose tied items at the k-th place may not follow the tie rule.

    Some part's own top-k had a tie across its k-th place at a value equal to the final k-th
    value: that part chose among equal items without the rule. (A part's tie below the final
    k-th value involves no item of the final list; above it is impossible, since that part alone
    would then put k + 1 items above the final k-th value.)
    """
    return (top.tie > NEG_INF) & (top.tie == top.values[:, -1])


def rank_from_top(values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) float64 rank = 1 + #(top-k values strictly above the target's score).

    Exact when the target's rank is <= k (every item above it is then in the top-k); k + 1
    otherwise: a miss at every cut-off <= k either way.
    """
    return 1 + (values > target[:, None]).sum(dim=1).to(torch.float64)


def dense_top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (B, k), cols (B, k)) of dense (B, V) scores by the tie rule (module docstring).

    ``torch.topk(k + 1)``, then rows with a tie across the k-th place are redone with a stable
    sort (one host sync to find them), then (score desc, id asc) order inside the k.
    """
    V = scores.shape[1]
    part = chunk_top(scores, k, lo=0, sentinel=V, group=1)
    values, cols = part.values, part.cols
    ambiguous = (part.tie > NEG_INF).nonzero().squeeze(1)
    if len(ambiguous):
        values, cols = values.clone(), cols.clone()
        values[ambiguous], cols[ambiguous] = exact_top(scores[ambiguous], k, sentinel=V)
    order = canonical_order(values, cols)
    return values.gather(1, order), cols.gather(1, order)


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
        Top-k lists follow the tie rule (equal scores: lower item id first; module docstring).
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
        top_scores, top_cols = dense_top(scores, max(self.ks))  # (B, k_max), tie rule
        self._accumulate(rank, top_scores, top_cols)

    @torch.no_grad()
    def update_top(self, top: CatalogTop) -> None:
        """Adds a batch from its streaming state over the whole catalog (``core.evaluation``).

        ``top.values``/``top.cols`` are the (B, max(ks)) best scores and catalog columns by the
        tie rule, history already masked; the rank comes from them (``rank_from_top``), which
        gives every metric exactly as ``update`` does on the same scores.
        """
        k = top.values.shape[1]
        if k != max(self.ks):
            raise ValueError(f"update_top: the state keeps {k} items, expected max(ks) = {max(self.ks)}")
        device = top.values.device
        if self._surprisal.device != device:
            self._surprisal = self._surprisal_cpu.to(device)
        self._accumulate(rank_from_top(top.values, top.target), top.values, top.cols)

    def _accumulate(self, rank: torch.Tensor, top_scores: torch.Tensor, top_cols: torch.Tensor) -> None:
        """Adds a batch's float64 sums: ``rank`` (B,) float64 (exact up to max(ks), larger
        beyond), ``top_scores``/``top_cols`` (B, max(ks)) best first by the tie rule."""
        B = rank.shape[0]
        device = rank.device
        # A top-k entry at -inf is a masked item (only when fewer than k items are unmasked):
        # it is not a recommendation, so it counts for neither Coverage nor Surprisal.
        top_valid = top_scores > float("-inf")  # (B, k_max)
        top_cols = top_cols.clamp(max=self.n_items - 1)  # a pad column (never valid) stays in range
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

            if k not in self._seen:  # one spare slot past the items, where invalid entries land
                self._seen[k] = torch.zeros(self.n_items + 1, dtype=torch.bool, device=device)
            # An index, not a boolean mask: a mask's nonzero would sync with the host every batch.
            self._seen[k].index_fill_(0, torch.where(valid, top_cols[:, :k], self.n_items).flatten(), True)
        for key, value in row.items():
            self._add(key, value)
        self._n_users += B
        row["users"] = torch.full((), float(B), dtype=torch.float64, device=device)  # no host copy
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
        seen = torch.stack([self._seen[k][:self.n_items].cpu() if k in self._seen
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
        self._seen = {k: torch.cat([seen[i], seen.new_zeros(1)]) for i, k in enumerate(self.ks)}

    def compute(self) -> dict[str, float]:
        """Returns {f"HitRate@{k}", f"NDCG@{k}", f"MRR@{k}", f"Coverage@{k}", f"Surprisal@{k}"}."""
        if self._n_users == 0:
            raise ValueError("RankingMetrics.compute() before any update(): no users to average")
        out: dict[str, float] = {}
        for k in self.ks:
            for name in ("HitRate", "NDCG", "MRR"):
                out[f"{name}@{k}"] = self._sums[f"{name}@{k}"].item() / self._n_users
            out[f"Coverage@{k}"] = self._seen[k][:self.n_items].sum().item() / self.n_items
            out[f"Surprisal@{k}"] = self._sums[f"Surprisal@{k}"].item() / self._n_users
        return out
