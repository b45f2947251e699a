"""Data-parallel pieces on 2 and 3 CPU ranks (gloo) against one process.

- evaluation split over ranks equals a 1-rank evaluation bit for bit;
- a global batch split over ranks with the weighted loss gives the 1-rank gradient under DDP
  (and the unweighted local mean does not);
- a rank that dies or is stuck makes the others stop with one DistributedError (on the
  group's timeout, while the stuck rank still waits);
- a tool's exit under torchrun skips finalization but keeps its status and output.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.batching import DeviceSequences, TrainBatches, eval_order
from core.data.shards import SequenceData
from core.evaluation import count_train_users, eval_args, eval_shard, evaluate_model, evaluate_popularity
from core.losses import ce
from core.metrics import RankingMetrics
from core.model import SASRec
from core.parallel.collectives import (DistContext, DistributedError, all_reduce, failure, init_from_env,
                                       is_collective_failure, shard_bounds)
from core.parallel.shares import loss_scale, rank_positions, scaled_loss, shard_batch, shard_rows
from core.training.ranks import Ranks
from tests.distributed_ranks import free_port, rank_env, run_ranks

ROOT = Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS, MAX_LEN = 37, 23, 8


def make_data(seed: int = 0) -> SequenceData:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 14, N_USERS)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(1, N_ITEMS + 1, offsets[-1]).astype(np.int32)
    return SequenceData(offsets=offsets, items=items, n_users=N_USERS, n_items=N_ITEMS)


def make_model(seed: int = 1) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(N_ITEMS, dim=16, max_len=MAX_LEN, n_blocks=1, n_heads=2, dropout=0.0)


# --- host-side splitting ----------------------------------------------------------------------


@pytest.mark.parametrize("n,world", [(0, 2), (1, 3), (7, 2), (7, 3), (9, 3), (10, 4)])
def test_shard_bounds_cover_everything_once_and_balanced(n, world):
    bounds = shard_bounds(n, world)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(hi == lo2 for (_, hi), (lo2, _) in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1
    rows = torch.arange(n)
    assert torch.equal(torch.cat([shard_rows(rows, r, world) for r in range(world)]), rows)


def test_rank_positions_and_loss_scale_recover_the_global_mean():
    positions = np.array([3, 0, 5, 8, 1, 2, 7])
    per_rank = rank_positions(positions, 3)
    assert per_rank == [3 + 0 + 5, 8 + 1, 2 + 7]
    total = int(positions.sum())
    # sum_r mean_r * scale_r / K = sum_r sum_r / N
    means = [10.0, 4.0, 2.5]
    got = sum(m * loss_scale(n, total, 3) for m, n in zip(means, per_rank)) / 3
    assert got == pytest.approx(sum(m * n for m, n in zip(means, per_rank)) / total)


def test_a_share_carries_every_ranks_sizes_whatever_order_the_batches_are_used_in():
    """The share sizes travel with each batch (no counter the batcher writes and the loss reads
    later): drawing the next share first leaves the one drawn before it intact."""
    seqs = DeviceSequences.from_data(make_data(), "cpu")
    batches = list(TrainBatches(seqs, batch_size=7, max_len=MAX_LEN, seed=0).epoch(1))
    ranks = Ranks(DistContext(rank=1, world=3, backend="gloo"))  # sharding alone: no process group
    drawn = ranks.batches(batches)
    first, second = next(drawn), next(drawn)
    for share, batch in ((second, batches[1]), (first, batches[0])):  # used in the other order
        alone = shard_batch(batch, 1, 3)
        assert share.shares == alone.shares and torch.equal(share.inputs, alone.inputs)
        assert share.shares.positions == tuple(rank_positions(batch.row_positions, 3))
        assert share.positions == share.shares.positions[1] == int((share.targets != 0).sum())
        assert sum(share.shares.ids) == batch.inputs.numel()
        assert share.shares.rows[1] == share.inputs.shape[0]


@pytest.mark.parametrize("n_users,batch,world", [(37, 5, 2), (37, 5, 3), (4, 5, 3), (30, 5, 3)])
def test_eval_shard_takes_whole_global_batches_round_robin(n_users, batch, world):
    shares = [eval_shard(n_users, batch, r, world) for r in range(world)]
    assert torch.equal(torch.sort(torch.cat(shares)).values, torch.arange(n_users))
    global_batches = [list(range(lo, min(lo + batch, n_users))) for lo in range(0, n_users, batch)]
    for r, share in enumerate(shares):
        local = [share[i:i + batch].tolist() for i in range(0, len(share), batch)]
        assert local == global_batches[r::world]


def test_metrics_state_round_trip_is_bit_exact():
    torch.manual_seed(0)
    counts = np.arange(N_ITEMS + 1)
    one = RankingMetrics(n_items=N_ITEMS, ks=(1, 5), item_user_counts=counts, n_train_users=40)
    for _ in range(4):
        one.update(torch.randn(6, N_ITEMS), torch.randint(1, N_ITEMS + 1, (6,)))
    copy = RankingMetrics(n_items=N_ITEMS, ks=(1, 5), item_user_counts=counts, n_train_users=40)
    copy.load_state(*one.state())
    assert copy.compute() == one.compute()
    rows, seen = one.state()
    copy.load_state(rows, torch.zeros_like(seen))  # a lost Coverage union shows
    assert copy.compute()["Coverage@5"] == 0.0 != one.compute()["Coverage@5"]


# --- distributed evaluation -------------------------------------------------------------------

EVAL_BATCH = 5  # 37 users: 8 batches, the last one of 2 users


def _eval_args(data: SequenceData) -> dict:
    return dict(batch_size=EVAL_BATCH, max_len=MAX_LEN, mask_history=True, ks=(1, 5, 10),
                item_user_counts=data.train_item_user_counts(), n_train_users=count_train_users(data))


def _evaluate(ctx: DistContext) -> dict:
    data = make_data()
    model = make_model()
    seqs = DeviceSequences.from_data(data)
    args = {**_eval_args(data), **eval_args(ctx, seqs, EVAL_BATCH)}
    local = {**_eval_args(data), "users": eval_order(seqs)[eval_shard(data.n_users, EVAL_BATCH, ctx.rank, ctx.world)]}
    return {
        "valid": evaluate_model(model, model, seqs, split="valid", amp=False, **args),
        "test": evaluate_model(model, model, seqs, split="test", amp=False, **args),
        "popularity": evaluate_popularity(seqs, split="test", **args),
        "unreduced": evaluate_model(model, model, seqs, split="test", amp=False, **local),
    }


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_evaluation_equals_one_process_exactly(world, tmp_path):
    expected = _evaluate(DistContext())
    results = run_ranks(_evaluate, world, tmp_path)
    for rank, got in enumerate(results):
        for split in ("valid", "test", "popularity"):
            assert got[split] == expected[split], (rank, split)  # dict equality: every float exact
        # the reduction is what makes them equal: one rank's own share gives other numbers
        assert got["unreduced"] != expected["test"]


# --- data-parallel gradients ------------------------------------------------------------------

GLOBAL_BATCH = 7  # rows per global batch, not divisible by 2 or 3


def _global_batch():
    seqs = DeviceSequences.from_data(make_data())
    batch = next(TrainBatches(seqs, batch_size=GLOBAL_BATCH, max_len=MAX_LEN, seed=0).epoch(1))
    return batch.inputs, batch.targets


def _loss_and_grads(model, inputs, targets, *, local_positions, global_positions, world):
    hidden = model(inputs)  # (B, L, D)
    mask = targets != 0
    catalog = getattr(model, "module", model).catalog()  # DDP wraps the model
    loss = scaled_loss(ce, hidden[mask], catalog, targets[mask] - 1,
                         local_positions=local_positions, global_positions=global_positions, world=world)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _ddp_grads(ctx: DistContext) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    inputs, targets = _global_batch()
    row_positions = (targets != 0).sum(1).numpy()  # the loop knows these from the host
    per_rank = rank_positions(row_positions, ctx.world)
    total = int(row_positions.sum())
    mine_in, mine_t = shard_rows(inputs, ctx.rank, ctx.world), shard_rows(targets, ctx.rank, ctx.world)
    ddp = DDP(make_model())
    weighted = _loss_and_grads(ddp, mine_in, mine_t, local_positions=per_rank[ctx.rank],
                               global_positions=total, world=ctx.world)
    # the broken variant: each rank's own mean, averaged by DDP (scale 1 everywhere)
    plain = _loss_and_grads(ddp, mine_in, mine_t, local_positions=1, global_positions=ctx.world,
                            world=ctx.world)
    return {"weighted": weighted, "plain": plain, "positions": per_rank}


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_global_batch_with_weighted_loss_gives_the_one_rank_gradient(world, tmp_path):
    inputs, targets = _global_batch()
    total = int((targets != 0).sum())
    expected = _loss_and_grads(make_model(), inputs, targets, local_positions=total,
                               global_positions=total, world=1)
    results = run_ranks(_ddp_grads, world, tmp_path)
    assert len(set(results[0]["positions"])) > 1  # ranks really hold different shares
    for got in results:
        for name, grad in expected.items():
            torch.testing.assert_close(got["weighted"][f"module.{name}"], grad, rtol=1e-5, atol=1e-7)
    worst = max((results[0]["plain"][f"module.{n}"] - g).abs().max().item() for n, g in expected.items())
    assert worst > 1e-4  # unweighted local means are not the global mean's gradient


def _bf16_grads(model, inputs, targets, device, **scales) -> dict:
    """``_loss_and_grads`` under bf16 autocast on ``device`` (as training runs), grads in fp64 on the CPU."""
    with torch.autocast(device.type, dtype=torch.bfloat16):
        grads = _loss_and_grads(model, inputs.to(device), targets.to(device), **scales)
    return {n.removeprefix("module."): g.double().cpu() for n, g in grads.items()}


def _ddp_bf16_grads(ctx: DistContext) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    inputs, targets = _global_batch()
    row_positions = (targets != 0).sum(1).numpy()
    per_rank = rank_positions(row_positions, ctx.world)
    mine = [shard_rows(t, ctx.rank, ctx.world) for t in (inputs, targets)]
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ddp = DDP(make_model().to(ctx.device), device_ids=device_ids)
    weighted = _bf16_grads(ddp, *mine, ctx.device, local_positions=per_rank[ctx.rank],
                           global_positions=int(row_positions.sum()), world=ctx.world)
    # the broken variant: each rank's own mean, averaged by DDP (scale 1 everywhere)
    plain = _bf16_grads(ddp, *mine, ctx.device, local_positions=1, global_positions=ctx.world, world=ctx.world)
    return {"weighted": weighted, "plain": plain}


def _rel_error(grads: dict, oracle: dict) -> float:
    """||g - g64|| / ||g64|| over all parameters at once."""
    diff = sum(float((grads[n] - g).square().sum()) for n, g in oracle.items())
    return (diff / sum(float(g.square().sum()) for g in oracle.values())) ** 0.5


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_bf16_data_parallel_gradient_is_as_close_to_float64_as_one_process(device, tmp_path):
    """Under bf16 autocast a data-parallel step (2 ranks, each on its share of the global batch)
    is as far from the float64 gradient as one process is: splitting the batch adds no error
    beyond bf16's. Ranks that average their own means instead (the broken variant) are caught."""
    inputs, targets = _global_batch()
    total = int((targets != 0).sum())
    scales = dict(local_positions=total, global_positions=total, world=1)
    oracle = {n: g.cpu() for n, g in _loss_and_grads(make_model().double(), inputs, targets, **scales).items()}
    one = _rel_error(_bf16_grads(make_model().to(device), inputs, targets, torch.device(device), **scales), oracle)
    ranks = run_ranks(_ddp_bf16_grads, 2, tmp_path, device=device)
    errors = [_rel_error(got["weighted"], oracle) for got in ranks]
    print(f"relative error vs float64: one process {one:.3e}, ranks {errors}, broken "
          f"{[_rel_error(got['plain'], oracle) for got in ranks]}")  # shown by pytest -rP
    assert 0 < one < 0.05  # bf16 really ran (not a float32 path) and is sane
    assert max(errors) <= 1.5 * one + 1e-4, (errors, one)
    # the broken variant (each rank's own mean) is far beyond bf16's error
    assert min(_rel_error(got["plain"], oracle) for got in ranks) > 5 * max(one, *errors)


def _empty_share(ctx: DistContext) -> dict:
    """A global batch of 2 rows on 3 ranks: rank 2 holds no row and must still take part."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    inputs, targets = (t[:2] for t in _global_batch())
    row_positions = (targets != 0).sum(1).numpy()
    per_rank = rank_positions(row_positions, ctx.world)
    ddp = DDP(make_model())
    mine = [shard_rows(t, ctx.rank, ctx.world) for t in (inputs, targets)]
    return _loss_and_grads(ddp, *mine, local_positions=per_rank[ctx.rank],
                           global_positions=int(row_positions.sum()), world=ctx.world)


def test_a_rank_without_rows_contributes_zero(tmp_path):
    inputs, targets = (t[:2] for t in _global_batch())
    total = int((targets != 0).sum())
    expected = _loss_and_grads(make_model(), inputs, targets, local_positions=total,
                               global_positions=total, world=1)
    for got in run_ranks(_empty_share, 3, tmp_path):
        for name, grad in expected.items():
            torch.testing.assert_close(got[f"module.{name}"], grad, rtol=1e-5, atol=1e-7)


# --- a dead rank ------------------------------------------------------------------------------

TIMEOUT_S = 10.0  # the process group's own timeout: what ends the wait for a stuck rank
SAFETY_S = 600.0  # only so that a regression fails instead of hanging the suite; never reached


def _die_or_wait(rank: int, world: int, port: int, out_dir: str, how: str, started, stuck) -> None:
    """Rank 1 dies (``os._exit``) or gets stuck (waits on ``stuck``, which the test never sets)
    after DDP is built; the others run a collective and write what they got to ``rank{r}.txt``.
    ``started``: every rank has imported everything before the group's rendezvous, which has to
    complete within TIMEOUT_S; imports on a busy machine take as long as they take."""
    os.environ.update(rank_env(rank, world, port))
    torch.set_num_threads(1)
    started.wait()
    ctx = init_from_env("cpu", timeout_s=TIMEOUT_S)
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    if rank == 1:
        if how.startswith("dies"):
            os._exit(3)  # without a word, as a killed or crashed worker would
        stuck.wait()  # stuck (a deadlock, a lost device): the others must not wait for it
        os._exit(4)
    try:
        if how == "dies_in_ddp":  # DDP's own all-reduce, inside backward, as run.py sees it
            try:
                ddp(torch.randn(2, 4)).sum().backward()
            except RuntimeError as err:
                assert is_collective_failure(err), err
                raise failure(ctx, "all_reduce", err) from err
        else:
            all_reduce(ctx, torch.ones(3))
        message = "no error"
    except DistributedError as err:
        message = str(err)
    Path(out_dir, f"rank{rank}.txt").write_text(message)
    os._exit(0)  # the group is broken: no orderly shutdown to wait for


@pytest.mark.parametrize("how", ["dies", "hangs", "dies_in_ddp"])
def test_a_dead_or_stuck_rank_stops_the_others_with_one_clear_error(how, tmp_path):
    """The verdict rests on events, not on durations: the survivors end on their own with one
    error line each, while the stuck rank is still stuck (so they did not wait for it)."""
    spawn = multiprocessing.get_context("spawn")
    started, stuck = spawn.Barrier(3), spawn.Event()
    port = free_port()
    procs = [spawn.Process(target=_die_or_wait, args=(r, 3, port, str(tmp_path), how, started, stuck))
             for r in range(3)]
    for p in procs:
        p.start()
    try:
        for rank in (0, 2):
            procs[rank].join(timeout=SAFETY_S)
            assert procs[rank].exitcode == 0, f"rank {rank}: exit {procs[rank].exitcode} (None: hung)"
        if how == "hangs":  # still stuck: the survivors ended on the group's timeout, not by its end
            assert procs[1].is_alive()
        else:
            procs[1].join(timeout=SAFETY_S)
            assert procs[1].exitcode == 3
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    for rank in (0, 2):
        message = Path(tmp_path, f"rank{rank}.txt").read_text()
        assert message.startswith(f"rank {rank}/3: all_reduce failed: another rank died"), message
        assert "\n" not in message


def test_only_backend_failures_count_as_a_lost_rank():
    assert is_collective_failure(RuntimeError("[../third_party/gloo/transport/tcp/pair.cc:553] Connection closed"))
    assert is_collective_failure(DistributedError("rank 1/2: barrier failed"))
    assert not is_collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


# A command-line tool's exit (``leave``): under torchrun it skips Python's finalization, where a
# gloo thread could abort a finished run, and must still flush what the tool printed.
EXIT = ("import atexit, os, sys; from experiments.joined import leave; "
        "atexit.register(lambda: print(' finalized', file=sys.stderr)); "
        "print('table', end=''); print('wrote', end='', file=sys.stderr); {exit}(3)")


def _exit_with(exit_call: str, world: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", EXIT.format(exit=exit_call)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
                               "WORLD_SIZE": world})  # buffered output, as most users run


@pytest.mark.parametrize("world", ["1", "2"])
def test_leave_keeps_the_status_and_the_output_and_skips_finalization_under_torchrun(world):
    proc = _exit_with("leave", world)
    assert (proc.returncode, proc.stdout) == (3, "table")
    # one process: a normal exit (atexit handlers run); torchrun: no finalization at all
    assert proc.stderr == ("wrote finalized\n" if world == "1" else "wrote")


def test_an_exit_that_skips_finalization_without_flushing_loses_the_output():
    """The broken variant ``leave`` guards against: os._exit alone drops buffered stdout."""
    proc = _exit_with("os._exit", "2")
    assert (proc.returncode, proc.stdout) == (3, "")
