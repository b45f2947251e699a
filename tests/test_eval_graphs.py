"""Evaluation batches replayed as CUDA graphs (``core.evaluation.BatchGraphs``).

On the CPU a stand-in for ``cuda_graph`` (``rerun``) captures by running the body once and
replays by running it again and copying the new outputs INTO the captured ones: the outputs are
the same tensors, overwritten at every replay, as a CUDA graph's are. The oracle is the eager
evaluation with the same input widths (``eval_batches(pow2_width=True)``, which the graphed split
uses; on the CPU a wider input may round the last bit differently). The model's item table is
integer-valued, so scores tie often and the tie fix-up (a rescan of the batch's users) runs in
replayed batches. Each deliberately broken variant must change the metrics.
"""

from __future__ import annotations

import functools

import pytest
import torch

from core import evaluation
from core.data.batching import DeviceSequences
from core.data.shards import SequenceData
from core.data.synthetic import PRESETS, generate
from core.evaluation import count_train_users, evaluate_model
from core.model import SASRec

KS = (1, 5, 10)


def rerun(body, log: list | None = None):
    """The CPU stand-in for ``cuda_graph(pool)``: (replay, outputs), replay rewriting outputs."""
    out = body()

    def replay():
        if log is not None:
            log.append(len(out))
        for t, new in zip(out, body()):
            t.copy_(new)
    return replay, out


def _data(n_users: int = 300) -> SequenceData:
    params = {**PRESETS["tiny"], "n_users": n_users, "n_items": 130}
    offsets, items = generate(**params, seed=5)
    return SequenceData(offsets=offsets, items=items, n_users=n_users, n_items=params["n_items"], attrs={})


def _model(data: SequenceData, device="cpu") -> SASRec:
    torch.manual_seed(0)
    model = SASRec(n_items=data.n_items, max_len=20).to(device).eval()
    with torch.no_grad():  # every item a copy of one of 15 rows: equal scores, distinct ids (ties)
        gen = torch.Generator().manual_seed(1)
        base = torch.randint(-1, 2, (15, model.catalog().shape[1]), generator=gen).float()
        table = base[torch.randint(0, 15, (model.catalog().shape[0],), generator=gen)]
        table[0] = 3 * base[0]  # item 1 first for many users (the padding mutant masks it)
        model.catalog().copy_(table)
    return model


def _args(data: SequenceData, mask_history: bool = True) -> dict:
    return {"batch_size": 32, "max_len": 20, "mask_history": mask_history, "ks": KS, "chunk_size": 4096,
            "group_size": 4, "item_user_counts": data.train_item_user_counts(),
            "n_train_users": count_train_users(data)}


def _eager_pow2(monkeypatch):
    """The eager evaluation on the graphed split's widths (``eval_batches(pow2_width=True)``)."""
    monkeypatch.setattr(evaluation, "eval_batches", functools.partial(evaluation.eval_batches, pow2_width=True))


def _compare(monkeypatch, *, mask_history=True, split="test", log=None, shuffled=True):
    """(graphed metrics, eager metrics); ``shuffled``: batches of mixed lengths (by default
    users come shortest first, so a shape's batches never hold fewer pairs than the last one)."""
    data = _data()
    seqs = DeviceSequences.from_data(data, "cpu")
    model, args = _model(data), _args(data, mask_history)
    if shuffled:
        args["users"] = torch.randperm(data.n_users, generator=torch.Generator().manual_seed(2))
    graphed = evaluate_model(model, model, seqs, split=split, amp=False,
                             capture=functools.partial(rerun, log=log), **args)
    with monkeypatch.context() as m:
        _eager_pow2(m)
        eager = evaluate_model(model, model, seqs, split=split, amp=False, **args)
    return graphed, eager


@pytest.mark.parametrize("shuffled", [True, False])
@pytest.mark.parametrize("mask_history", [True, False])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_graphed_split_equals_the_eager_one(monkeypatch, mask_history, split, shuffled):
    replays, fixups, real_rescan = [], [], evaluation._rescan

    def counting_rescan(chunk, n_users, combine, scan_args):
        inner = real_rescan(chunk, n_users, combine, scan_args)
        return lambda rows: (fixups.append(len(rows)), inner(rows))[1]

    monkeypatch.setattr(evaluation, "_rescan", counting_rescan)
    graphed, eager = _compare(monkeypatch, mask_history=mask_history, split=split, log=replays, shuffled=shuffled)
    assert graphed == eager
    assert len(replays) >= 4  # 300 users in batches of 32: most full batches are replays
    assert fixups  # the tie fix-up ran (also in replayed batches: the mutants below need it)


def test_the_shapes_are_few_and_the_padding_masks_nothing():
    assert [evaluation.pairs_bucket(n) for n in (0, 1, 1024, 1025, 5000)] == [1024, 1024, 1024, 2048, 8192]
    data = _data()
    seqs = DeviceSequences.from_data(data, "cpu")
    widths = {b.inputs.shape[1] for b in evaluation.eval_batches(seqs, split="test", batch_size=32, max_len=20,
                                                                  pow2_width=True)}
    assert widths <= {1, 2, 4, 8, 16, 20}
    # (row, item 0) pairs mask nothing: column -1 lies outside every chunk
    scores = torch.randn(3, 7)
    masked = scores.clone()
    evaluation._mask_chunk(masked, (torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0])), 0)
    assert torch.equal(masked, scores)


def test_a_capture_that_fails_leaves_the_split_eager(monkeypatch):
    data = _data()
    seqs = DeviceSequences.from_data(data, "cpu")
    model, args = _model(data), _args(data)

    def failing(body):
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    with pytest.warns(UserWarning, match="CUDA graphs off for this split"):
        graphed = evaluate_model(model, model, seqs, split="test", amp=False, capture=failing, **args)
    _eager_pow2(monkeypatch)
    assert graphed == evaluate_model(model, model, seqs, split="test", amp=False, **args)


# --- deliberately broken variants ---------------------------------------------------------------


def _no_clone(out):  # the replay's outputs used as they are: the next replay overwrites them
    return list(out)


def _users_not_cloned(out):  # the state cloned, the user vectors of the tie fix-up's rescan not
    return [out[0], *(t.clone() for t in out[1:])]


def _pad_with_item_one(static, batch, seen):  # padding pairs that mask item 1 (column 0)
    static[0].copy_(batch.inputs)
    static[1].copy_(batch.targets)
    if seen is not None:
        n = len(seen[0])
        static[2].copy_(static[4])
        static[3].fill_(1)
        static[2][:n].copy_(seen[0])
        static[3][:n].copy_(seen[1])


def _stale_pairs(static, batch, seen):  # the pairs past this batch's own left from the last batch
    static[0].copy_(batch.inputs)
    static[1].copy_(batch.targets)
    if seen is not None:
        n = len(seen[0])
        static[2][:n].copy_(seen[0])
        static[3][:n].copy_(seen[1])


MUTANTS = {"no_clone": ("_fresh", _no_clone), "users_not_cloned": ("_fresh", _users_not_cloned),
           "pad_item_one": ("_copy_in", _pad_with_item_one), "stale_pairs": ("_copy_in", _stale_pairs)}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_every_mutant_is_detected(monkeypatch, mutant):
    name, broken = MUTANTS[mutant]
    monkeypatch.setattr(evaluation, name, broken)
    graphed, eager = _compare(monkeypatch)
    assert graphed != eager, mutant


# --- on the GPU: real graphs --------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mask_history", [True, False])
def test_cuda_graphed_split_equals_the_eager_one_bit_for_bit(monkeypatch, mask_history):
    """Real CUDA graphs (one pool, a few shapes) against the eager split on the same widths; a
    replayed batch is queued without a host sync."""
    data = _data(600)
    seqs = DeviceSequences.from_data(data, "cuda")
    model, args = _model(data, "cuda"), _args(data, mask_history)
    captured, real_capture = [], evaluation.BatchGraphs._capture

    def counting(self, key, batch, masked):
        captured.append(key)
        return real_capture(self, key, batch, masked)

    monkeypatch.setattr(evaluation.BatchGraphs, "_capture", counting)
    replays, real_start = [], evaluation.BatchGraphs.start

    def no_sync_replays(self, batch, seen):
        shape = (batch.inputs.shape[1], 0 if seen is None else evaluation.pairs_bucket(len(seen[0])))
        if len(batch.users) == self.n_users and shape in self.graphs:
            replays.append(shape)
            torch.cuda.set_sync_debug_mode("error")
        try:
            return real_start(self, batch, seen)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(evaluation.BatchGraphs, "start", no_sync_replays)
    for split in ("valid", "test"):
        graphed = evaluate_model(model, model, seqs, split=split, amp=True, **args)
        with monkeypatch.context() as m:
            _eager_pow2(m)
            m.setattr(evaluation, "GRAPHS", False)
            eager = evaluate_model(model, model, seqs, split=split, amp=True, **args)
        assert graphed == eager, split
    assert captured and len(replays) > len(captured)
