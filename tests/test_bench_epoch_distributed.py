"""``torchrun --nproc-per-node 2 experiments/bench/bench_epoch.py`` on the tiny preset (CPU, gloo).

Data-parallel and catalog-parallel: rank 0 alone writes one set of results with world_size 2
and the per-rank columns; the ranks' shares of every timed epoch add up to the 1-process
epoch's scored positions, and the epoch loss is the 1-process one (the same global batches
trained); compile and CUDA-graph variants are refused with one error line per rank, before
anything is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from experiments.bench.bench_epoch import COLUMNS, main

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--variants", "static", "--epochs", "2", "--warmup-steps", "1", "--sample-steps", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """300 tiny users on the CPU, dropout-free (dropout draws differ between K ranks and 1)."""
    cache = tmp_path_factory.mktemp("cache")
    bindings = ["dataset.synthetic_overrides = {'n_users': 300}", f"dataset.cache_dir = '{cache}'",
                "train.device = 'cpu'", "train.batch_size = 64", "SASRec.dropout = 0.0"]
    return ["--gin", "gin/quickstart.gin", *(a for b in bindings for a in ("--gin_bindings", b))]


def launch(out: Path, *args: str) -> subprocess.CompletedProcess:
    """The benchmark under torchrun with 2 processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(ROOT / "experiments" / "bench" / "bench_epoch.py"), *args, "--out", str(out)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def one_process(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "bench"
    assert main([*tiny, *ARGS, "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())["rows"][0]


@pytest.mark.parametrize("catalog_parallel", [False, True])
def test_two_ranks_write_one_result_with_the_rank_columns(catalog_parallel, tiny, one_process, tmp_path):
    out = tmp_path / "bench"
    extra = ["--gin_bindings", "train.catalog_parallel = True"] if catalog_parallel else []
    proc = launch(out, *tiny, *extra, *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| dataset | loss | variant |") == 1  # rank 0 alone prints
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json", "results.md"]

    frame = pd.read_csv(out / "results.csv")
    assert list(frame.columns) == COLUMNS and len(frame) == 1
    row = frame.iloc[0]
    assert pd.isna(row["error"])
    assert (row["world_size"], bool(row["catalog_parallel"])) == (2, catalog_parallel)
    assert (one_process["world_size"], one_process["catalog_parallel"]) == (1, False)
    assert row["positions_per_epoch"] == one_process["positions_per_epoch"]
    assert row["steps_per_epoch"] == one_process["steps_per_epoch"]
    assert 0 < row["rank_positions_per_s_min"] <= row["rank_positions_per_s_max"] < row["positions_per_s"]
    assert pd.isna(row["peak_gib"]) and pd.isna(row["peak_gib_min"])  # CPU
    # DDP cannot run the instrumented (split-backward) step; catalog-parallel can
    assert pd.isna(row["step_ms"]) != catalog_parallel

    report = json.loads((out / "results.json").read_text())
    assert report["env"]["world_size"] == 2
    ranks = report["rows"][0]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    # disjoint shares that cover the global batches: every timed epoch's positions add up
    for epoch in range(2):
        assert sum(r["positions"][epoch] for r in ranks) == one_process["positions_per_epoch"]
    assert all(r["positions"][1] > 0 for r in ranks)
    # one epoch time for all ranks: the shares' rates add up to the aggregate
    assert sum(r["positions_per_s"] for r in ranks) == pytest.approx(row["positions_per_s"], rel=1e-9)
    # the same global batches trained: the epoch-2 loss of one process (float32 noise)
    assert row["train_loss"] == pytest.approx(one_process["train_loss"], rel=1e-5)


@pytest.mark.parametrize("variant", ["static+compile", "graph"])
def test_what_training_refuses_under_torchrun_is_refused(variant, tiny, tmp_path):
    out = tmp_path / "bench"
    proc = launch(out, *tiny, "--variants", f"static,{variant}", "--epochs", "1")
    assert proc.returncode != 0  # torchrun says 1 whatever its workers' statuses (here 2)
    # one line per rank, counted where it stands: under load another process's output (C++
    # logging writes in pieces) can land on the same line before it
    refusal = (f"error: gin/quickstart.gin, variant {variant!r}: train.compile and train.cuda_graph "
               "are not supported under torchrun")
    assert proc.stderr.count(refusal) == 2, proc.stderr[-3000:]
    assert not out.exists()
