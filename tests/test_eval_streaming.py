"""Streaming evaluation (issue 21.5): chunked scoring + running top-k against the dense path.

The oracles: a stable numpy argsort of the dense masked scores (top-k lists by the tie rule:
score desc, lower item id first) and the dense ``RankingMetrics.update`` on the very same fp32
scores (the chunks concatenated, so both paths see identical bits). Data with exact ties:
integer-valued embeddings and duplicated catalog rows. Each deliberately broken variant
(mutant) of the streaming code must be caught by the same comparisons.
"""

from __future__ import annotations

import dataclasses
import functools
from itertools import pairwise

import numpy as np
import pytest
import torch

from core import evaluation, metrics
from core.data.batching import DeviceSequences
from core.data.shards import SequenceData
from core.data.synthetic import PRESETS, generate
from core.evaluation import (
    catalog_top,
    chunk_ranges,
    count_train_users,
    evaluate_model,
    evaluate_popularity,
    scan_catalog,
)
from core.metrics import CatalogTop, RankingMetrics, merge_top, needs_exact
from core.model import SASRec

KS = (1, 5, 10)
NEG_INF = float("-inf")


# --- cases: users x catalog scores with ties, history, targets ---------------------------------


def make_case(kind: str, *, n_users: int = 24, n_items: int = 150, dim: int = 8, seed: int = 0,
              max_history: int = 20, target_in_history: bool = True):
    """(users (B, D), catalog (V, D), targets (B,) item ids, history pairs (rows, item ids))."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "int":  # few distinct scores: ties everywhere
        users = torch.randint(-2, 3, (n_users, dim), generator=gen).float()
        catalog = torch.randint(-2, 3, (n_items, dim), generator=gen).float()
    else:
        users = torch.randn(n_users, dim, generator=gen)
        catalog = torch.randn(n_items, dim, generator=gen)
    if kind == "dup":  # every item the copy of one of the first 20: equal scores, distinct ids
        catalog = catalog[torch.randint(0, 20, (n_items,), generator=gen)]
    targets = torch.randint(1, n_items + 1, (n_users,), generator=gen)
    rows, items = [], []
    for r in range(n_users):
        size = int(torch.randint(0, max_history + 1, (1,), generator=gen))
        seen = torch.randperm(n_items, generator=gen)[:size] + 1
        if target_in_history and r % 5 == 0:  # RecBole: a masked target is a miss
            seen = torch.cat([seen, targets[r:r + 1]]).unique()
        rows += [r] * len(seen)
        items += seen.tolist()
    return users, catalog, targets, (torch.tensor(rows, dtype=torch.int64), torch.tensor(items, dtype=torch.int64))


def chunk_fn(users, catalog):
    return lambda lo, hi: users @ catalog[lo:hi].T


def dense_scores(users, catalog, chunk_size):
    """The streaming path's exact scores as one matrix (chunks concatenated)."""
    score = chunk_fn(users, catalog)
    return torch.cat([score(a, b) for a, b in chunk_ranges(0, len(catalog), chunk_size)], 1)


def oracle_top(scores: torch.Tensor, history, k: int):
    """(values, cols, target-free) by a stable numpy sort of the masked dense scores."""
    masked = scores.clone()
    if history is not None:
        masked[history[0], history[1] - 1] = NEG_INF
    x = masked.numpy().astype(np.float64)
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]
    return masked, np.take_along_axis(x, order, 1), order


def streaming(users, catalog, targets, history, *, k, chunk_size, group_size, device="cpu"):
    return catalog_top(chunk_fn(users, catalog), len(users), n_items=len(catalog), k=k, targets=targets,
                       seen=history, device=device, chunk_size=chunk_size, group_size=group_size)


def mismatches(case, *, k=10, chunk_size, group_size, mask=True, device="cpu") -> list[str]:
    """Everything the streaming path must reproduce, as a list of differences (empty: equal)."""
    users, catalog, targets, history = (t.to(device) if isinstance(t, torch.Tensor) else
                                        tuple(h.to(device) for h in t) for t in case)
    history = history if mask else None
    out = []
    try:
        top = streaming(users, catalog, targets, history, k=k, chunk_size=chunk_size,
                        group_size=group_size, device=device)
    except (IndexError, RuntimeError, ValueError) as err:  # a mutant may break shapes: detected too
        return [f"raised {type(err).__name__}: {err}"]
    scores = dense_scores(users, catalog, chunk_size)  # on the device: the very same bits
    masked, values, cols = oracle_top(scores.cpu(), None if history is None else tuple(h.cpu() for h in history), k)
    masked, top, targets = masked.to(device), CatalogTop(*(t.cpu() for t in top)), targets.cpu()
    valid = np.isfinite(values)  # -inf entries are no recommendation: their ids do not matter
    if not np.array_equal(top.values.numpy().astype(np.float64), values):
        out.append("top-k values")
    if not np.array_equal(np.where(valid, top.cols.numpy(), -1), np.where(valid, cols, -1)):
        out.append("top-k items (tie rule)")
    if not torch.equal(top.target, masked.cpu().gather(1, (targets - 1)[:, None]).squeeze(1)):
        out.append("target scores")
    # metrics: dense update (the previous evaluation) vs update_top, same scores
    counts = np.concatenate([[0], np.arange(len(catalog)) % 7])
    dense = RankingMetrics(n_items=len(catalog), ks=KS, item_user_counts=counts, n_train_users=10)
    stream = RankingMetrics(n_items=len(catalog), ks=KS, item_user_counts=counts, n_train_users=10)
    dense.update(scores.clone(), targets.to(device), history=history)
    stream.update_top(CatalogTop(*(t.to(device) for t in top)))
    if dense.compute() != stream.compute():
        got, want = stream.compute(), dense.compute()
        out.append("metrics " + ", ".join(key for key in want if got[key] != want[key]))
    if not torch.equal(dense.state()[0], stream.state()[0]):
        out.append("per-batch float64 sums")
    return out


CASES = {kind: make_case(kind, seed=i) for i, kind in enumerate(("float", "int", "dup"))}
# Few items left after masking: fewer unmasked items than k (-inf entries in the top-k)
CASES["crowded"] = make_case("int", n_items=14, max_history=10, seed=7)


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("chunk_size,group_size", [(150, 1), (37, 1), (64, 4), (23, 2), (1000, 8), (5, 1)])
@pytest.mark.parametrize("mask", [True, False])
def test_streaming_equals_the_dense_oracle(kind, chunk_size, group_size, mask):
    # chunk sizes: one chunk, not a multiple of V, smaller than k, larger than V; groups that
    # do not divide the chunk
    assert mismatches(CASES[kind], chunk_size=chunk_size, group_size=group_size, mask=mask) == []


def test_the_cases_hold_what_they_test():
    int_case, crowded = CASES["int"], CASES["crowded"]
    scores = dense_scores(int_case[0], int_case[1], 150)
    _, values, _ = oracle_top(scores, None, 11)
    assert (values[:, 9] == values[:, 10]).mean() > 0.5  # most rows tie across their 10th place
    rows, items = crowded[3]
    assert (np.bincount(rows.numpy()) > 14 - 10).any()  # some user has < k unmasked items
    targets = crowded[2]
    assert any((items[rows == r] == targets[r]).any() for r in range(len(targets)))  # masked target


def test_tie_fix_up_is_exercised_and_rare_on_float_scores():
    def fixed(kind):
        users, catalog, targets, history = CASES[kind]
        top = scan_catalog(chunk_fn(users, catalog), len(users), n_items=len(catalog), k=10,
                           targets=targets, seen=history, device="cpu", chunk_size=64, group_size=4)
        return int(needs_exact(top).sum())

    assert fixed("int") > 0 and fixed("crowded") > 0  # the tests above run the fix-up
    assert fixed("float") == 0


# --- catalog shards: the merge a distributed top-k would use (issue 22) ------------------------


@pytest.mark.parametrize("kind", ["int", "dup", "float"])
@pytest.mark.parametrize("cuts", [(0, 61, 150), (0, 3, 80, 81, 150), (0, 150)])
def test_states_of_catalog_shards_merge_to_the_whole(kind, cuts):
    users, catalog, targets, history = CASES[kind]
    args = {"n_items": len(catalog), "k": 10, "targets": targets, "seen": history, "device": "cpu",
            "chunk_size": 16, "group_size": 2}
    # Slices of one matrix: a score's bits must not depend on the chunk it is computed in (a
    # (B, 1) matmul may round differently from a (B, 16) one), or ties would move with the cuts.
    full = users @ catalog.T
    score = lambda lo, hi: full[:, lo:hi].clone()
    shards = [scan_catalog(score, len(users), lo=a, hi=b, **args) for a, b in pairwise(cuts)]
    merged = functools.reduce(merge_top, shards[::-1])  # any order: the merge commutes
    fix = needs_exact(merged).nonzero().squeeze(1)
    if len(fix):  # each shard redoes those rows exactly, and the redone states merge the same way
        exact = [scan_catalog(score, len(users), lo=a, hi=b, rows=fix, **args) for a, b in pairwise(cuts)]
        merged = merged.put(fix, functools.reduce(merge_top, exact))
    whole = catalog_top(score, len(users), **args)
    for name, got, want in zip(CatalogTop._fields, merged, whole):
        if name != "tie":  # the tie marker may differ; what it guards is the lists
            assert torch.equal(got, want), name
    assert torch.equal(merged.has_target, torch.ones(len(users), dtype=torch.bool))


def test_nan_scores_are_refused():
    users, catalog, targets, history = make_case("float", n_users=4, n_items=40)
    catalog[33, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        streaming(users, catalog, targets, history, k=10, chunk_size=16, group_size=4)


# --- the real evaluation: model and popularity, both paths --------------------------------------


def _small_data() -> SequenceData:
    params = {**PRESETS["tiny"], "n_users": 90, "n_items": 130}
    offsets, items = generate(**params, seed=5)
    return SequenceData(offsets=offsets, items=items, n_users=params["n_users"],
                        n_items=params["n_items"], attrs={})


@pytest.mark.parametrize("mask_history", [True, False])
def test_evaluate_model_and_popularity_same_on_both_paths(mask_history):
    data = _small_data()
    seqs = DeviceSequences.from_data(data, "cpu")
    torch.manual_seed(0)
    model = SASRec(n_items=data.n_items, max_len=20).eval()
    with torch.no_grad():  # integer-valued item table: exact scores with many ties
        model.catalog().copy_(torch.randint(-1, 2, model.catalog().shape).float())
    args = {"batch_size": 32, "max_len": 20, "mask_history": mask_history, "ks": KS,
            "item_user_counts": data.train_item_user_counts(), "n_train_users": count_train_users(data)}
    for split in ("valid", "test"):
        dense = evaluate_model(model, model, seqs, split=split, amp=False, path="dense", **args)
        for chunk_size in (29, 4096):
            stream = evaluate_model(model, model, seqs, split=split, amp=False, path="streaming",
                                    chunk_size=chunk_size, group_size=4, **args)
            assert stream == dense, (split, chunk_size)
        pop = evaluate_popularity(seqs, split=split, path="dense", **args)
        assert evaluate_popularity(seqs, split=split, chunk_size=29, **args) == pop


def test_rank_split_finishes_every_batch_one_behind_and_fixes_its_ties(monkeypatch):
    """rank_split finishes each batch's state (NaN check, tie fix-up: one host sync) after it
    queued the next one. Every batch must still be finished once, in order, and give the dense
    path's metrics (integer-valued table: many ties). (A finish without the fix-up is a mutant
    of ``test_every_mutant_is_detected``; a finish that skips the NaN check is caught here.)"""
    data = _small_data()
    seqs = DeviceSequences.from_data(data, "cpu")
    torch.manual_seed(0)
    model = SASRec(n_items=data.n_items, max_len=20).eval()
    with torch.no_grad():
        model.catalog().copy_(torch.randint(-1, 2, model.catalog().shape).float())
    args = {"batch_size": 32, "max_len": 20, "mask_history": True, "ks": KS, "split": "test",
            "item_user_counts": data.train_item_user_counts(), "n_train_users": count_train_users(data)}
    dense = evaluate_model(model, model, seqs, amp=False, path="dense", **args)
    finished, real_finish = [], evaluation.finish_top

    def counting(pending):
        finished.append(pending.top.values.shape[0])
        return real_finish(pending)

    monkeypatch.setattr(evaluation, "finish_top", counting)
    assert evaluate_model(model, model, seqs, amp=False, chunk_size=29, group_size=4, **args) == dense
    assert finished == [32, 32, 26]  # 90 users: every batch once, in order
    with torch.no_grad():
        model.catalog()[7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        evaluate_model(model, model, seqs, amp=False, chunk_size=29, group_size=4, **args)
    monkeypatch.setattr(evaluation, "finish_top", lambda pending: pending.top)  # broken: no checks
    evaluate_model(model, model, seqs, amp=False, chunk_size=29, group_size=4, **args)  # NaN unnoticed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_a_batch_is_queued_without_a_host_sync(monkeypatch):
    """On the GPU the device runs ahead of the host: scoring a batch (model, history, every
    chunk's mask, top-k and merge: ``start_top``) asks nothing of the device; ``finish_top``
    is the one sync per batch."""
    data = _small_data()
    seqs = DeviceSequences.from_data(data, "cuda")
    model = SASRec(n_items=data.n_items, max_len=20).cuda().eval()
    score_fn = evaluation.model_scores(model, model, amp=True)
    batch = next(iter(evaluation.eval_batches(seqs, split="test", batch_size=32, max_len=20)))
    counts, n_train = data.train_item_user_counts(), evaluation.count_train_users(data)
    on_gpu = metrics.RankingMetrics(n_items=data.n_items, ks=(1, 10), item_user_counts=counts, n_train_users=n_train)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            seen = evaluation.history(seqs, batch.users, split="test", size=batch.n_seen)
            pending = evaluation.start_top(score_fn(batch.inputs), len(batch.users), n_items=data.n_items,
                                           k=10, targets=batch.targets, seen=seen, device=seqs.device,
                                           chunk_size=29, group_size=4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    top = evaluation.finish_top(pending)
    assert top.values.shape == (32, 10)
    # finish_top waits for its own batch, not for what was queued after it (the next batch):
    # with its flags sent (a pinned copy and an event), a long kernel queued afterwards is still
    # running when it returns; without (a plain .tolist()), it has finished. The same with a
    # tie fix-up (rows 3 and 17 marked: their exact rescan gives the same state): its rows are
    # found by ``nonzero_static``; the broken variant, ``nonzero``, waits for the queue.
    cases = [(True, False, None), (False, False, None), (True, True, None),
             (True, True, lambda t, size: t.nonzero())]
    for send, fixing, broken in cases:
        with torch.no_grad():
            pending = evaluation.start_top(score_fn(batch.inputs), len(batch.users), n_items=data.n_items,
                                           k=10, targets=batch.targets, seen=seen, device=seqs.device,
                                           chunk_size=29, group_size=4)
        if fixing:
            fix = torch.zeros_like(pending.fix)
            fix[[3, 17]] = True
            pending = dataclasses.replace(pending, fix=fix, flags=torch.tensor([0, 2], device="cuda"))
        if broken is not None:
            monkeypatch.setattr(torch, "nonzero_static", broken)
        if send:
            torch.cuda.set_sync_debug_mode("error")
            try:
                evaluation.send_flags(pending)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        torch.cuda._sleep(2_000_000_000)  # ~1 s of GPU clock cycles, queued after the batch
        later = torch.cuda.Event()
        later.record()
        got = evaluation.finish_top(pending)
        still_running = not later.query()  # asked before anything else syncs (torch.equal does)
        torch.cuda.synchronize()
        monkeypatch.undo()
        assert still_running is (send and broken is None), (send, fixing)
        assert all(torch.equal(getattr(got, f), getattr(top, f)) for f in ("values", "cols", "target")), (send, fixing)
    # Adding the finished batch to the metrics asks nothing of the device either (a boolean-mask
    # index for Coverage and a host-made tensor synced every batch, draining the queue); the first
    # batch of a split copies the Surprisal vector over (once).
    cpu = metrics.RankingMetrics(n_items=data.n_items, ks=(1, 10), item_user_counts=counts, n_train_users=n_train)
    for m, device in ((on_gpu, "cuda"), (cpu, "cpu")):
        m.update_top(type(top)(*(t.to(device) for t in top)))
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_gpu.update_top(top)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu.update_top(type(top)(*(t.cpu() for t in top)))
    assert on_gpu.compute() == cpu.compute()


def test_unknown_path_is_refused():
    data = _small_data()
    seqs = DeviceSequences.from_data(data, "cpu")
    with pytest.raises(ValueError, match="path"):
        evaluate_popularity(seqs, split="test", path="fast", batch_size=32, max_len=20, mask_history=True,
                            ks=(10,), item_user_counts=data.train_item_user_counts(),
                            n_train_users=count_train_users(data))


# --- mutants: each broken variant must be caught ------------------------------------------------


def _drop_running(*parts):  # the merge forgets the running top-k (keeps only the newest chunk's)
    whole = merge_top(*parts)
    return whole._replace(values=parts[-1].values, cols=parts[-1].cols)


def _skip_last_column(lo, hi, size):  # off by one: each chunk stops one column early
    return [(a, max(a, b - 1)) for a, b in _real_chunk_ranges(lo, hi, size)]


def _overlap_one_column(lo, hi, size):  # off by one: each chunk after the first starts one early
    return [(max(lo, a - 1), b) for a, b in _real_chunk_ranges(lo, hi, size)]


_real_chunk_ranges = evaluation.chunk_ranges
_real_mask_chunk = evaluation._mask_chunk
_real_chunk_top = evaluation.chunk_top


def _mask_all_but_second(patch):
    calls = {"n": 0}

    def mask(scores, seen, lo):
        calls["n"] += 1
        if calls["n"] % 3 != 2:  # the second chunk of each 3-chunk scan is left unmasked
            _real_mask_chunk(scores, seen, lo)

    patch.setattr(evaluation, "_mask_chunk", mask)


def _mask_edges_too(scores, seen, lo):  # pairs outside the chunk mask its first or last column
    if seen is not None:
        cols = (seen[1] - 1 - lo).clamp(0, scores.shape[1] - 1)
        scores[seen[0], cols] = float("-inf")


def _mask_one_column_off(scores, seen, lo):  # item ids taken as columns (no -1)
    if seen is not None:
        _real_mask_chunk(scores, (seen[0], seen[1] + 1), lo)


def _no_tie_marker(scores, k, **kw):  # ties across a chunk's k-th place go unreported
    part = _real_chunk_top(scores, k, **kw)
    return part._replace(tie=torch.full_like(part.tie, NEG_INF))


def _contiguous_group_columns(best, group, w):  # candidates of contiguous groups, maxima strided
    return (best[..., None] * group + torch.arange(group)).flatten(1)


def _maxima_without_leftover(scores, group):  # the w % group columns past the last group dropped
    B, w = scores.shape
    n = w // group
    maxima = scores[:, :n * group].reshape(B, group, n).amax(dim=1)
    return torch.cat([maxima, maxima.new_full((B, 1) if w % group else (B, 0), NEG_INF)], 1)


def _order_by_value_only(values, cols):  # the merge ignores the item id on equal scores
    return values.argsort(dim=1, descending=True)


MUTANTS = {
    "merge drops the running top-k": lambda p: p.setattr(evaluation, "merge_top", _drop_running),
    "chunk boundary off by one (gap)": lambda p: p.setattr(evaluation, "chunk_ranges", _skip_last_column),
    "chunk boundary off by one (overlap)": lambda p: p.setattr(evaluation, "chunk_ranges", _overlap_one_column),
    "history not masked in a chunk": _mask_all_but_second,
    "history outside a chunk masks its edge columns": lambda p: p.setattr(evaluation, "_mask_chunk", _mask_edges_too),
    "history masked one column off": lambda p: p.setattr(evaluation, "_mask_chunk", _mask_one_column_off),
    ">= instead of > in the rank": lambda p: p.setattr(
        metrics, "rank_from_top", lambda v, t: 1 + (v >= t[:, None]).sum(1).double()),
    "no tie marker": lambda p: p.setattr(evaluation, "chunk_top", _no_tie_marker),
    "finish without the tie fix-up": lambda p: p.setattr(evaluation, "finish_top", lambda pending: pending.top),
    "merge without the id tie-break": lambda p: p.setattr(metrics, "canonical_order", _order_by_value_only),
    "group candidates not the grouped columns": lambda p: p.setattr(metrics, "group_columns", _contiguous_group_columns),
    "leftover group never a candidate": lambda p: p.setattr(metrics, "group_maxima", _maxima_without_leftover),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_every_mutant_is_detected(mutant, monkeypatch):
    sizes = [(40, 2), (40, 3)]  # 40 % 3: every chunk has a leftover group
    assert all(mismatches(CASES[kind], chunk_size=c, group_size=g) == [] for kind in CASES for c, g in sizes)
    MUTANTS[mutant](monkeypatch)
    found = [m for kind in CASES for c, g in sizes for m in mismatches(CASES[kind], chunk_size=c, group_size=g)]
    assert found, f"mutant {mutant!r} went unnoticed"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", sorted(CASES))
def test_cuda_streaming_equals_the_dense_oracle(kind):
    """On the GPU: torch.topk's CUDA tie order, NaN placement and the fix-up, same comparisons."""
    for chunk_size, group_size in [(37, 1), (64, 4), (1000, 8)]:
        for mask in (True, False):
            assert mismatches(CASES[kind], chunk_size=chunk_size, group_size=group_size, mask=mask,
                              device="cuda") == [], (chunk_size, group_size, mask)
    users, catalog, targets, _ = make_case("float", n_users=4, n_items=300)
    catalog[133, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        streaming(users.cuda(), catalog.cuda(), targets.cuda(), None, k=10, chunk_size=128,
                  group_size=8, device="cuda")
