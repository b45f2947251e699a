"""Runs a function on K CPU ranks (gloo) in spawned processes, for the distributed tests.

``run_ranks(fn, world, tmp_path, *args)`` starts ``world`` processes with torchrun's
environment variables, calls ``fn(ctx, *args)`` in each with ``ctx`` from
``init_from_env(device)`` (default "cpu"; "cuda": the ranks share the visible GPUs, over gloo
when there are fewer GPUs than ranks) and returns the ranks' results (torch.save'd through ``tmp_path``).
``fn`` must be a module-level function (it is pickled by name).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int, nodes: int = 1) -> dict[str, str]:
    """What torchrun sets for a worker, its ranks spread evenly over ``nodes`` simulated nodes."""
    per_node = world // nodes
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank % per_node),
            "LOCAL_WORLD_SIZE": str(per_node), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _entry(rank: int, world: int, port: int, out_dir: str, timeout_s: float, device: str, fn, args,
           started, nodes: int = 1) -> None:
    os.environ.update(rank_env(rank, world, port, nodes))
    torch.set_num_threads(1)  # K ranks on a 2-core machine
    from core.parallel.collectives import init_from_env, shutdown
    from experiments.joined import leave

    started.wait()  # all imported: the rendezvous (within timeout_s) never waits on a slow import
    ctx = init_from_env(device, timeout_s=timeout_s)
    try:
        result = fn(ctx, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        shutdown(ctx)
    leave(0)  # as the tools end: no finalization, where a gloo thread can abort a finished rank


def run_ranks(fn, world: int, tmp_path: Path, *args, timeout_s: float = 60.0, device: str = "cpu",
              nodes: int = 1) -> list:
    """[fn(ctx_r, *args) for each rank r], run in ``world`` spawned processes (on ``nodes``
    simulated nodes: LOCAL_RANK and LOCAL_WORLD_SIZE as torchrun sets them on each)."""
    out = Path(tmp_path) / f"ranks_{fn.__name__}_{world}"
    out.mkdir(parents=True, exist_ok=True)
    started = mp.get_context("spawn").Barrier(world)
    mp.start_processes(_entry, args=(world, free_port(), str(out), timeout_s, device, fn, args, started, nodes),
                       nprocs=world, join=True, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
