"""Ranks (data- and catalog-parallel) driving a few Adam steps on 2 and 3 CPU ranks vs 1.

A plain step (forward, compact block, loss, backward, Adam) over ``TrainBatches``: the same
parameters, Adam state and evaluation as one process within float32 noise (a catalog-parallel
model's table and its Adam state gathered for the comparison). Its sharded checkpoints:
tests/test_dcp_checkpoint.py.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from core.data.batching import DeviceSequences, TrainBatches
from core.evaluation import count_train_users, evaluate_model
from core.losses import ce
from core.model import SASRec
from core.parallel.collectives import DistContext, shard_bounds
from core.parallel.shares import ShardedBatch
from core.training.ranks import Ranks
from tests.distributed_ranks import run_ranks
from tests.test_distributed import make_data

N_ITEMS, MAX_LEN, BATCH, STEPS = 23, 8, 7, 3


def make_model(**kwargs) -> SASRec:
    torch.manual_seed(3)
    return SASRec(N_ITEMS, dim=16, max_len=MAX_LEN, n_blocks=1, n_heads=2, dropout=0.0, **kwargs)


def _step(net, model, optimizer, loss_fn, batch) -> float:
    # a rank's share of a global batch brings every rank's share sizes, for the model and the loss
    extra = {"shares": batch.shares} if isinstance(batch, ShardedBatch) else {}
    hidden = net(batch.inputs, **extra)  # (B, L, D)
    mask = batch.targets != 0
    loss = loss_fn(hidden[mask], model.catalog(), batch.targets[mask] - 1, **extra)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _train(ctx: DistContext, catalog_parallel: bool) -> dict:
    data = make_data()
    seqs = DeviceSequences.from_data(data, ctx.device)
    ranks = Ranks(ctx, catalog_parallel=catalog_parallel)  # one process: every member a no-op
    model = ranks.build_model(make_model).to(ctx.device)
    net = ranks.prepare(model)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3)
    loss_fn = ranks.loss(ce)
    batches = ranks.batches(TrainBatches(seqs, batch_size=BATCH, max_len=MAX_LEN, seed=0).epoch(1))
    losses = []
    for i, batch in enumerate(batches):
        if i == STEPS:
            break
        losses.append(ranks.mean(_step(net, model, optimizer, loss_fn, batch)))
    args = dict(batch_size=5, max_len=MAX_LEN, mask_history=True, ks=(5,),
                item_user_counts=data.train_item_user_counts(), n_train_users=count_train_users(data),
                **ranks.eval_args(seqs, 5))
    with ranks.evaluating(model):
        metrics = evaluate_model(model, model, seqs, split="valid", amp=False, **args)
    def whole(p, value):  # the table's Adam state: every rank's rows, as one process holds it
        return model.item_emb.gather_state(value) if ranks.sharded and p is model.item_emb.weight else value

    adam = {f"{name} {k}": whole(p, v) for name, p in model.named_parameters()
            for k, v in optimizer.state[p].items() if k != "step"}
    return {"losses": losses, "model": _cpu(model.state_dict()), "metrics": metrics, "adam": _cpu(adam),
            "shard_rows": model.item_emb.weight.shape[0]}


def _cpu(tensors: dict) -> dict:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


def _comparable(key: str, value: torch.Tensor) -> torch.Tensor:
    """The key bias shifts every attention logit of a query alike: its gradient is 0 up to
    rounding, and Adam turns rounding noise into steps of ~lr. Only its q and v parts count."""
    if "attn.qkv.bias" not in key:
        return value
    dim = value.shape[0] // 3
    return torch.cat([value[:dim], value[2 * dim:]])


def assert_same_training(got: dict, expected: dict) -> None:
    assert got["losses"] == pytest.approx(expected["losses"], rel=1e-5)
    for part, atol in (("model", 1e-6), ("adam", 1e-8)):
        assert got[part].keys() == expected[part].keys()
        for key, value in expected[part].items():
            torch.testing.assert_close(_comparable(key, got[part][key]), _comparable(key, value),
                                       rtol=1e-4, atol=atol, msg=key)
    assert got["metrics"] == pytest.approx(expected["metrics"], abs=1e-9)


@pytest.mark.parametrize("world,catalog_parallel", [(3, False), (2, True), (3, True)])
def test_k_ranks_train_like_one(world, catalog_parallel, tmp_path):
    expected = _train(DistContext(), False)
    results = run_ranks(_train, world, tmp_path, catalog_parallel)
    for got in results:
        assert_same_training(got, expected)
    if catalog_parallel:  # each rank held V / K rows (+ the unused padding row), not V + 1
        assert sorted(r["shard_rows"] - 1 for r in results) == sorted(
            hi - lo for lo, hi in shard_bounds(N_ITEMS, world))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("catalog_parallel", [False, True])
def test_k_ranks_train_like_one_on_cuda(catalog_parallel, tmp_path):
    """The same on CUDA, fp32: 2 ranks (sharing one GPU over gloo, or NCCL on two) against one
    CUDA process: the device paths (collectives of CUDA tensors, the sharded table on the GPU)."""
    expected = _train(DistContext(device=torch.device("cuda", 0)), False)
    for got in run_ranks(_train, 2, tmp_path, catalog_parallel, device="cuda"):
        assert_same_training(got, expected)


def _rank(rank: int, world: int) -> Ranks:
    """Rank ``rank`` of ``world`` as ``build_model`` sees it (it talks to no other rank)."""
    return Ranks(DistContext(rank=rank, world=world, backend="gloo"), catalog_parallel=True)


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_builds_the_one_process_values_of_its_rows(world):
    """The shard is the one-process table's rows, the rest of the model is the same, and the
    global RNG goes on from the same state (dropout, batches) on every rank."""
    one = make_model()
    after_one = torch.rand(4)
    for rank, (lo, hi) in enumerate(shard_bounds(N_ITEMS, world)):
        model = _rank(rank, world).build_model(make_model)
        assert torch.equal(torch.rand(4), after_one)
        assert not model.item_emb.weight[0].any()
        assert torch.equal(model.item_emb.weight[1:], one.item_emb.weight[1 + lo : 1 + hi])
        theirs = dict(model.named_parameters())
        for name, value in one.named_parameters():
            if name != "item_emb.weight":
                assert torch.equal(theirs[name], value), name


class _LargestTensor(TorchDispatchMode):
    """The largest tensor any torch op makes (factories, copies, views) while it is on."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.numel = max([self.numel, *sizes])
        return out


def test_a_rank_never_makes_the_whole_item_table():
    """Building rank 1 of 3 of a 30,000-item model makes no tensor beyond its shard (+ the
    padding row): the whole (V + 1, D) table is never allocated, not even for a moment."""
    n_items, dim, world = 30_000, 4, 3
    lo, hi = shard_bounds(n_items, world)[1]
    make = functools.partial(SASRec, n_items, dim=dim, max_len=4, n_blocks=0)
    with _LargestTensor() as one:
        make()
    assert one.numel == (n_items + 1) * dim  # the measure sees the whole table where there is one
    with _LargestTensor() as rank:
        model = _rank(1, world).build_model(make)
    assert model.item_emb.weight.shape == (hi - lo + 1, dim)
    assert rank.numel <= (hi - lo + 1) * dim
