"""Catalog-parallel evaluation as a distributed top-k, on 2 and 3 CPU ranks (gloo).

Every rank ranks every user against its own catalog shard only; the per-rank streaming states
(``CatalogTop``, O(users x k)) are gathered and merged (``core.evaluation.merge_ranks``), and
the tie fix-up rescans each shard for the rows the merged state names. Checked here:
- metrics equal a one-process ``evaluate_model`` on the same weights exactly, through training's
  ``Evaluator`` (history masked), on tables with deliberately tied scores: one-hot rows (a
  score is a hidden coordinate, exact in any summation order: ties everywhere, across shards)
  and a random table whose items are copies of a few (ties wherever copies meet);
- ``catalog_top`` over shards equals one process's state (values, columns, target score) in
  chunks smaller than a shard;
- broken merges fail: the ranks' parts merged by value alone (no id tie-break), one rank's
  part dropped;
- ``core.recommend`` on a rank's shard (every rank the same users) gives the one-process lists;
- memory: no rank allocates anything near the table while evaluating (peak of new tensor
  storage below one shard), where the old gather made the whole table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core import evaluation
from core.data.batching import DeviceSequences
from core.data.shards import SequenceData
from core.evaluation import CatalogShard, catalog_top, count_train_users, evaluate_model
from core.metrics import CatalogTop, merge_top
from core.model import SASRec
from core.parallel.catalog import item_range
from core.parallel.collectives import DistContext
from core.recommendations import recommend
from core.training.loop import Evaluator
from core.training.ranks import Ranks
from tests.distributed_ranks import run_ranks
from tests.test_dcp_checkpoint import _Storage

N_USERS, N_ITEMS, DIM, MAX_LEN = 30, 40, 8, 8
KS = (1, 3, 10)
BIG_V, BIG_DIM, BIG_USERS, BIG_CHUNK = 30_000, 32, 16, 1024


def make_data(n_users: int = N_USERS, n_items: int = N_ITEMS, seed: int = 0) -> SequenceData:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 12, n_users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(1, n_items + 1, offsets[-1]).astype(np.int32)
    return SequenceData(offsets=offsets, items=items, n_users=n_users, n_items=n_items)


def make_model(n_items: int = N_ITEMS, dim: int = DIM, **kwargs) -> SASRec:
    torch.manual_seed(5)
    return SASRec(n_items, dim=dim, max_len=MAX_LEN, n_blocks=1, n_heads=2, dropout=0.0, **kwargs)


def tied_state(kind: str) -> dict:
    """A one-process model's state whose item table makes tied scores."""
    model = make_model()
    with torch.no_grad():
        table = model.item_emb.weight
        ids = torch.arange(N_ITEMS)
        if kind == "onehot":  # 6 distinct rows: a score is one hidden coordinate, exactly
            table[1:] = torch.eye(DIM)[(7 * ids) % 6]
        else:  # random rows, every item a copy of one of the first 7
            table[1:] = table[1:][ids % 7] * 5
    return model.state_dict()


def _evaluator(data: SequenceData, ranks: Ranks) -> Evaluator:
    return Evaluator(KS, True, 7, MAX_LEN, data.train_item_user_counts(), count_train_users(data), ranks)


def one_process(kind: str) -> dict:
    data = make_data()
    model = make_model()
    model.load_state_dict(tied_state(kind))
    return _evaluator(data, Ranks()).model(model, DeviceSequences.from_data(data), "valid", False)


def direct_case():
    """Users (B, D), a table of copies (V, D), targets, history pairs: for ``catalog_top``."""
    g = torch.Generator().manual_seed(1)
    users = torch.randn(12, DIM, generator=g)
    catalog = torch.randn(5, DIM, generator=g)[torch.arange(N_ITEMS) % 5]
    targets = torch.randint(1, N_ITEMS + 1, (12,), generator=g)
    rows = torch.arange(12).repeat_interleave(3)
    items = torch.randint(1, N_ITEMS + 1, (36,), generator=g)
    items[::4] = targets[rows[::4]]  # some targets masked: a miss
    return users, catalog, targets, (rows, items)


def direct_top(shard: CatalogShard | None) -> CatalogTop:
    users, catalog, targets, seen = direct_case()
    # the same score for a column however the chunks fall (a (B, 1) or (B, 2) matmul may round
    # the last bit differently on the CPU): the merge itself is under test here
    scores = users @ catalog.T
    return catalog_top(lambda a, b: scores[:, a:b].clone(), len(users), n_items=N_ITEMS, k=10,
                       targets=targets, seen=seen, device="cpu", chunk_size=4, group_size=2, shard=shard)


def _by_value_only(parts: list[CatalogTop]) -> CatalogTop:
    """Broken: the ranks' candidates ordered by value alone, later ranks first among ties."""
    merged = merge_top(*parts)
    k = merged.values.shape[1]
    values = torch.cat([p.values for p in reversed(parts)], 1)
    cols = torch.cat([p.cols for p in reversed(parts)], 1)
    order = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    return merged._replace(values=values.gather(1, order), cols=cols.gather(1, order))


MUTANTS = {None: None, "by_value_only": _by_value_only, "drop_last_rank": lambda parts: merge_top(*parts[:-1])}


def _on_rank(ctx: DistContext, measure: bool) -> dict:
    data = make_data()
    seqs = DeviceSequences.from_data(data)
    ranks = Ranks(ctx, catalog_parallel=True)
    out = {}
    correct = evaluation._merge_ranks
    for name, mutant in MUTANTS.items():
        evaluation._merge_ranks = mutant or correct
        try:
            for kind in ("onehot", "copies"):
                model = ranks.build_model(make_model)
                model.load_state_dict(tied_state(kind))  # this rank's rows of the whole table
                assert model.catalog().shape[0] == -np.subtract(*item_range(N_ITEMS, ctx.rank, ctx.world))
                out[name, kind] = _evaluator(data, ranks).model(model, seqs, "valid", False)
                assert model.item_emb is ranks._table  # the lookup is back after evaluation
            lo, hi = item_range(N_ITEMS, ctx.rank, ctx.world)
            out[name, "direct"] = tuple(direct_top(CatalogShard(ctx, lo, hi)))
        finally:
            evaluation._merge_ranks = correct
    out["popularity"] = _evaluator(data, ranks).popularity(seqs, "valid")
    model = ranks.build_model(make_model)
    model.load_state_dict(tied_state("onehot"))
    out["recommend"] = recommend(model, data, k=10, users=list(range(0, N_USERS, 2)))
    assert model.item_emb is ranks._table
    if measure:
        out["memory"] = _memory(ctx)
    return out


def _memory(ctx: DistContext) -> dict:
    """New tensor storage while a catalog-parallel model of BIG_V items evaluates."""
    data = make_data(BIG_USERS, BIG_V, seed=2)
    seqs = DeviceSequences.from_data(data)
    ranks = Ranks(ctx, catalog_parallel=True)
    model = ranks.build_model(make_model, n_items=BIG_V, dim=BIG_DIM)
    args = dict(split="valid", batch_size=BIG_USERS, max_len=MAX_LEN, mask_history=True, ks=(10,),
                item_user_counts=data.train_item_user_counts(), n_train_users=count_train_users(data),
                chunk_size=BIG_CHUNK)
    existing = [*model.parameters(), seqs.offsets, seqs.items, seqs.train_users]
    with ranks.evaluating(model), _Storage(existing) as measured:
        metrics = evaluate_model(model, model, seqs, amp=False, **args, **ranks.eval_args(seqs, BIG_USERS, model=True))
    with _Storage(existing) as gathering:  # what the evaluation gathered before: the whole table
        model.item_emb.full_weight()
    return {"peak": measured.peak, "largest": measured.largest, "gathered": gathering.largest,
            "shard_rows": model.catalog().shape[0], "metrics": metrics}


def test_one_process_reference_has_ties_across_the_shards():
    """The cases test what they claim: tied scores at the top-k boundary, across shards."""
    users, catalog, _, _ = direct_case()
    top = direct_top(None)
    tied = top.values[:, -1:] == top.values  # the 10th score repeated inside the top-10
    assert tied.sum(1).gt(1).all()
    for world in (2, 3):
        owners = {r for r in range(world) for c in top.cols[0].tolist()
                  if item_range(N_ITEMS, r, world)[0] <= c < item_range(N_ITEMS, r, world)[1]}
        assert len(owners) == world  # one user's top-10 alone spans every shard
    m = one_process("onehot")
    assert m["Coverage@3"] < 1 and m["HitRate@10"] > 0


@pytest.mark.parametrize("world", [2, 3])
def test_k_ranks_rank_their_shards_and_merge_equal_to_one_process(world, tmp_path):
    results = run_ranks(_on_rank, world, tmp_path, world == 2, timeout_s=120)
    expected = {kind: one_process(kind) for kind in ("onehot", "copies")}
    direct = tuple(direct_top(None))
    model = make_model()
    model.load_state_dict(tied_state("onehot"))
    reference_recommend = recommend(model, make_data(), k=10, users=list(range(0, N_USERS, 2)))
    for r, got in enumerate(results):
        for kind in ("onehot", "copies"):
            assert got[None, kind] == expected[kind], (r, kind)
        for a, b in zip(got[None, "direct"], direct):
            assert torch.equal(a, b), r
        assert got["popularity"] == results[0]["popularity"]
        assert got["recommend"].equals(reference_recommend), r  # tied lists, lower id first
        # each broken merge is caught: by the metrics, or by the state itself
        for name in ("by_value_only", "drop_last_rank"):
            same_metrics = all(got[name, kind] == expected[kind] for kind in ("onehot", "copies"))
            same_state = all(torch.equal(a, b) for a, b in zip(got[name, "direct"], direct))
            assert not (same_metrics and same_state), (r, name)
            if name == "by_value_only":  # ties only: ranks right, the chosen tied items wrong
                assert any(got[name, k]["Coverage@3"] != expected[k]["Coverage@3"]
                           or got[name, k]["Surprisal@3"] != expected[k]["Surprisal@3"] for k in ("onehot", "copies"))
    if world == 2:
        mem = [got["memory"] for got in results]
        table_bytes = (BIG_V + 1) * BIG_DIM * 4
        assert all(m["metrics"] == mem[0]["metrics"] for m in mem)
        for m in mem:
            shard_bytes = m["shard_rows"] * BIG_DIM * 4
            # below one shard of new storage (scores: BIG_USERS x BIG_CHUNK fp32 per chunk, and
            # the metrics' O(V) Surprisal / Coverage vectors, 8 + 1 bytes per item)
            assert m["peak"] < shard_bytes < table_bytes, m
            assert m["largest"] < BIG_V * BIG_DIM / 4, m
            assert m["gathered"] >= BIG_V * BIG_DIM  # the measure sees a whole table where one is made
