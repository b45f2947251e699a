"""Several nodes, simulated on the CPU (issue 22, point 4): each node's local rank 0 prepares
the data into its node-local cache first and the node's other ranks wait, then load it."""

from __future__ import annotations

from pathlib import Path

from core.parallel.collectives import DistContext
from tests.distributed_ranks import run_ranks


def _order(ctx: DistContext, calls: list) -> list:
    import experiments.joined as joined

    real = joined.barrier
    joined.barrier = lambda c: calls.append("barrier")
    try:
        with joined.main_first(ctx):
            calls.append("block")
    finally:
        joined.barrier = real
    return calls


def test_each_nodes_local_rank_0_goes_first_and_its_other_ranks_wait():
    """Global rank 2 is node 1's local rank 0: it must run first, not wait for global rank 0."""
    node1_first = DistContext(rank=2, world=4, local_rank=0, backend="gloo")
    node1_other = DistContext(rank=3, world=4, local_rank=1, backend="gloo")
    assert _order(node1_first, []) == ["block", "barrier"]
    assert _order(node1_other, []) == ["barrier", "block"]
    assert _order(DistContext(), []) == ["block"]  # one process: no group, no barrier


def _load_node_local(ctx: DistContext, root: str) -> dict:
    from core.dataset_config import dataset
    from experiments.joined import main_first

    node = Path(root) / f"node{ctx.rank // 2}"  # 2 ranks per node, a folder no other node sees
    cache = node / "cache"
    with main_first(ctx):
        existed = cache.exists()
        data = dataset(name="tiny", synthetic_preset="tiny", synthetic_overrides={"n_users": 60},
                       cache_dir=str(cache))
    return {"local_rank": ctx.local_rank, "cache_existed": existed, "n_users": int(data.data.n_users),
            "items": data.data.items.tolist()}


def test_two_nodes_with_node_local_folders_prepare_once_per_node(tmp_path):
    results = run_ranks(_load_node_local, 4, tmp_path, str(tmp_path / "nodes"), nodes=2)
    assert [r["local_rank"] for r in results] == [0, 1, 0, 1]
    assert [r["cache_existed"] for r in results] == [False, True, False, True]  # local rank 0 built it
    assert all(r["items"] == results[0]["items"] and r["n_users"] == 60 for r in results)
