"""Catalog-parallel CE and sharded item lookup on 1, 2 and 3 CPU ranks against plain CE.

Loss, dE and dC (the shards concatenated) within float32 noise; catalogs not divisible by K,
ignored targets, a rank without rows; broken variants (the combine without its max, dE not
summed over ranks, lookups not summed) must fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.losses import IGNORE_INDEX, ce
from core.parallel import catalog as CP
from core.parallel.collectives import DistContext, shard_bounds
from tests.distributed_ranks import run_ranks

D_MODEL = 12
SCALE = 10.0  # logits of ~35 (std); row 1 five times that: exp overflows fp32 without the max
ROWS = {1: [9], 2: [6, 4], 3: [6, 0, 5]}  # hidden states per rank (a rank may hold none)


def make_inputs(n_items: int, rows: list[int]):
    """Global E (N, D), C (V, D), targets (N,) with ignored ones, ids (sum rows, 3) for lookups."""
    g = torch.Generator().manual_seed(n_items * 100 + len(rows))
    n = sum(rows)
    e = torch.randn(n, D_MODEL, generator=g) * SCALE
    e[1] *= 5
    c = torch.randn(n_items, D_MODEL, generator=g)
    targets = torch.randint(0, n_items, (n,), generator=g)
    targets[::4] = IGNORE_INDEX
    ids = torch.randint(0, n_items + 1, (n, 3), generator=g)  # 0 = padding
    ids[0] = torch.tensor([0, n_items, 1])  # the padding id and both ends of the catalog
    upstream = torch.randn(n, 3, D_MODEL, generator=g)  # a fixed gradient into the lookups
    return e, c, targets, ids, upstream


def reference(n_items: int, rows: list[int]) -> dict:
    e, c, targets, ids, upstream = make_inputs(n_items, rows)
    e.requires_grad_()
    c.requires_grad_()
    loss = ce(e, c, targets)
    loss.backward()
    table = torch.cat([torch.zeros(1, D_MODEL), c.detach()]).requires_grad_()
    looked = F.embedding(ids, table)
    (looked * upstream).sum().backward()
    return {"loss": loss.detach(), "de": e.grad, "dc": c.grad, "lookup": looked.detach(),
            "dtable": table.grad[1:]}


def _mutate(mutant: str | None) -> None:
    if mutant == "small_chunks":  # not broken: the backward in many item chunks (edges inside the shards)
        CP._CHUNK_ELEMENTS = 2 * sum(ROWS[3])
    elif mutant == "combine_without_max":
        CP._combine = lambda parts: (torch.log(torch.exp(parts[:, 0]).sum(0)), parts[:, 1].sum(0))
    elif mutant == "no_sum_to_owner":  # each rank keeps its own partial rows: nothing summed
        def keep(ctx, partial, counts):
            lo = sum(counts[: ctx.rank])
            return partial[lo : lo + counts[ctx.rank]]
        CP._sum_to_owner = keep


def _on_rank(ctx: DistContext, n_items: int, rows: list[int], host_counts: bool, mutant: str | None):
    _mutate(mutant)
    e, c, targets, ids, upstream = make_inputs(n_items, rows)
    lo_row, hi_row = sum(rows[: ctx.rank]), sum(rows[: ctx.rank + 1])
    lo, hi = CP.item_range(n_items, ctx.rank, ctx.world)
    my_e = e[lo_row:hi_row].clone().requires_grad_()
    shard = c[lo:hi].clone().requires_grad_()
    counts = rows if host_counts else None
    loss = CP.catalog_parallel_ce(my_e, shard, targets[lo_row:hi_row], ctx=ctx, n_items=n_items, counts=counts)
    loss.backward()
    table = c[lo:hi].clone().requires_grad_()
    looked = CP.sharded_lookup(ids[lo_row:hi_row], table, ctx=ctx, n_items=n_items,
                               counts=None if counts is None else [3 * r for r in rows])
    (looked * upstream[lo_row:hi_row]).sum().backward()
    return {"loss": loss.detach(), "de": my_e.grad, "dc": shard.grad, "lookup": looked.detach(),
            "dtable": table.grad}


def gather(results: list[dict]) -> dict:
    """The ranks' pieces put together the way a 1-rank run holds them."""
    return {"losses": [r["loss"] for r in results],
            **{key: torch.cat([r[key] for r in results]) for key in ("de", "dc", "lookup", "dtable")}}


def assert_matches(got: dict, expected: dict) -> None:
    for loss in got["losses"]:
        torch.testing.assert_close(loss, expected["loss"], rtol=1e-5, atol=1e-5)
    for key in ("de", "dc", "lookup", "dtable"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_item_ranges_cover_the_catalog():
    assert [CP.item_range(11, r, 3) for r in range(3)] == [(0, 4), (4, 8), (8, 11)]
    assert shard_bounds(11, 3) == [(0, 4), (4, 8), (8, 11)]
    with pytest.raises(ValueError, match="at least one item per rank"):
        CP.item_range(2, 0, 3)


def test_one_rank_is_plain_ce():
    """K = 1 (no process group): the same function is CE over the whole table."""
    expected = reference(11, ROWS[1])
    assert_matches(gather([_on_rank(DistContext(), 11, ROWS[1], True, None)]), expected)


def test_the_shard_lse_is_chunked_like_the_whole():
    e, c, *_ = make_inputs(11, [40])
    old = CP._CHUNK_ELEMENTS
    try:
        CP._CHUNK_ELEMENTS = 3 * 11  # 3 rows per chunk: 14 chunks, the last one partial
        torch.testing.assert_close(CP.shard_lse(e, c), torch.logsumexp(e @ c.T, dim=1))
    finally:
        CP._CHUNK_ELEMENTS = old


@pytest.mark.parametrize("world,n_items,host_counts,chunks",
                         [(2, 11, True, None), (3, 11, True, None), (3, 13, False, None), (2, 13, True, "small_chunks")])
def test_catalog_parallel_equals_one_rank_ce(world, n_items, host_counts, chunks, tmp_path):
    expected = reference(n_items, ROWS[world])
    got = gather(run_ranks(_on_rank, world, tmp_path, n_items, ROWS[world], host_counts, chunks))
    assert_matches(got, expected)


def test_item_chunks_cover_the_shard_within_the_bound(monkeypatch):
    """The backward's transient is one (N, chunk) fp32 block of at most _CHUNK_ELEMENTS."""
    monkeypatch.setattr(CP, "_CHUNK_ELEMENTS", 100)
    for n_items, n_rows in [(1000, 7), (13, 200), (5, 1)]:
        chunks = list(CP._item_chunks(n_items, n_rows))
        assert [i for s in chunks for i in range(s.start, s.stop)] == list(range(n_items))
        assert all((s.stop - s.start) * n_rows <= 100 or s.stop - s.start == 1 for s in chunks)


def _bf16_errors(n_items: int = 3000, n: int = 200) -> dict:
    """Loss, dE, dC of the catalog-parallel CE on bf16 hidden states under (CPU) autocast,
    in 1,500 item chunks, against float64 on the same bf16-rounded operands."""
    g = torch.Generator().manual_seed(1)
    e = (torch.randn(n, 16, generator=g) * 2).bfloat16()  # logits of std ~2.4, as after training
    c = torch.randn(n_items, 16, generator=g) * 0.6
    targets = torch.randint(0, n_items, (n,), generator=g)
    targets[::7] = IGNORE_INDEX
    my_e, shard = e.clone().requires_grad_(), c.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what CUDA autocast does to the matmuls
        loss = CP.catalog_parallel_ce(my_e, shard, targets, ctx=DistContext(), n_items=n_items)
    loss.backward()
    e64, c64 = e.double().requires_grad_(), c.bfloat16().double().requires_grad_()
    ref = F.cross_entropy(e64 @ c64.T, targets, ignore_index=IGNORE_INDEX)
    ref.backward()

    def rel(a, b):
        return (torch.linalg.norm(a.double() - b) / torch.linalg.norm(b)).item()

    return {"loss": abs(loss.item() - ref.item()), "de": rel(my_e.grad, e64.grad), "dc": rel(shard.grad, c64.grad)}


# dE comes back in e's dtype: its bf16 rounding (~2**-9 relative) is the whole error
BF16_BOUNDS = {"loss": 1e-5, "de": 4e-3, "dc": 1e-5}


def test_bf16_gradients_match_a_float64_oracle(monkeypatch):
    """Under autocast the loss's math stays fp32 on the bf16 operands (as the split LSE kernel's):
    the previous backward rounded logits and dC to bf16 (~2e-3 relative in dC)."""
    monkeypatch.setattr(CP, "_CHUNK_ELEMENTS", 2 * 200)  # 2 items per chunk: 1,500 chunks
    errors = _bf16_errors()
    assert all(errors[k] < BF16_BOUNDS[k] for k in BF16_BOUNDS), errors


def test_bf16_logits_are_caught(monkeypatch):
    """The broken variant: logits rounded to bf16 by autocast (the code before 2026-11-29)."""
    monkeypatch.setattr(CP, "_CHUNK_ELEMENTS", 2 * 200)
    monkeypatch.setattr(CP, "_logits", lambda e, c: (e @ c.to(e.dtype).T).float())
    errors = _bf16_errors()
    assert errors["dc"] > 10 * BF16_BOUNDS["dc"] and errors["loss"] > BF16_BOUNDS["loss"], errors


@pytest.mark.parametrize("mutant,broken", [("combine_without_max", "loss"), ("no_sum_to_owner", "de")])
def test_broken_variants_fail(mutant, broken, tmp_path):
    expected = reference(11, ROWS[2])
    got = gather(run_ranks(_on_rank, 2, tmp_path, 11, ROWS[2], True, mutant))
    with pytest.raises(AssertionError):
        assert_matches(got, expected)
    if broken == "loss":
        assert not torch.isfinite(got["losses"][0])
    else:
        with pytest.raises(AssertionError):
            torch.testing.assert_close(got["de"], expected["de"], rtol=1e-4, atol=1e-5)
        with pytest.raises(AssertionError):
            torch.testing.assert_close(got["lookup"], expected["lookup"], rtol=1e-4, atol=1e-5)


def test_ddp_scales_reach_only_the_replicated_side():
    """e_grad_scale multiplies dE only; table_grad_scale the lookups' table gradient only."""
    e, c, targets, ids, upstream = make_inputs(11, ROWS[1])
    grads = []
    for e_scale, t_scale in ((1.0, 1.0), (3.0, 0.5)):
        my_e, shard, table = e.clone().requires_grad_(), c.clone().requires_grad_(), c.clone().requires_grad_()
        CP.catalog_parallel_ce(my_e, shard, targets, ctx=DistContext(), n_items=11,
                               e_grad_scale=e_scale).backward()
        (CP.sharded_lookup(ids, table, ctx=DistContext(), n_items=11, table_grad_scale=t_scale)
         * upstream).sum().backward()
        grads.append((my_e.grad, shard.grad, table.grad))
    (de1, dc1, dt1), (de3, dc3, dt3) = grads
    torch.testing.assert_close(de3, 3 * de1)
    torch.testing.assert_close(dc3, dc1)
    torch.testing.assert_close(dt3, 0.5 * dt1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_shard_lse_uses_the_split_kernel_on_cuda():
    """bf16 hidden states on CUDA go through the split LSE kernel; it matches torch's fp32 LSE."""
    g = torch.Generator().manual_seed(0)
    e = torch.randn(300, 64, generator=g).cuda().bfloat16()
    c = torch.randn(1003, 64, generator=g).cuda() * 0.1
    expected = torch.logsumexp(e.float() @ c.bfloat16().float().T, dim=1)
    torch.testing.assert_close(CP.shard_lse(e, c), expected, rtol=1e-4, atol=1e-3)
