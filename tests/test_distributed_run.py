"""``torchrun --nproc-per-node K experiments/run.py`` on the tiny preset (CPU, gloo) vs one process.

Data-parallel (K = 2) and catalog-parallel (K = 3, 500 items: not divisible by 3; CE and the
exact-CCE binding) give the 1-process loss curve within float32 noise and the same metrics;
only rank 0 writes; ``--resume`` with the same K continues as an uninterrupted run (within
float32 noise for K = 3: ``core.training.loop.train``'s docstring says why), another K is
refused; compile under torchrun is refused with one error line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("valid", "test", "popularity_test")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Bindings for a fast, dropout-free quickstart (dropout draws differ between K and 1)."""
    cache = tmp_path_factory.mktemp("cache")
    bindings = [f"dataset.cache_dir = '{cache}'", "dataset.synthetic_overrides = {'n_users': 150}",
                "train.batch_size = 64", "train.device = 'cpu'", "train.show_progress = False",
                "train.epochs = 2", "SASRec.dropout = 0.0"]
    return ["--gin", "gin/quickstart.gin", *(arg for b in bindings for arg in ("--gin_bindings", b))]


def launch(ranks: int, out: Path, args: list[str], *extra: str) -> subprocess.CompletedProcess:
    """experiments/run.py in one process (ranks = 1) or under torchrun with ``ranks`` processes."""
    run = [str(ROOT / "experiments" / "run.py"), *args, "--out", str(out), *extra]
    if ranks > 1:
        run = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *run]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *run], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env=env)


def result(out: Path) -> tuple[list[float], dict]:
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return [row["train_loss"] for row in history], json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def one_process(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    proc = launch(1, out, tiny)
    assert proc.returncode == 0, proc.stderr
    return result(out)


def assert_same_run(got: tuple[list[float], dict], expected: tuple[list[float], dict]) -> None:
    (losses, metrics), (want_losses, want) = got, expected
    assert losses == pytest.approx(want_losses, rel=1e-5)
    for split in SPLITS:  # a float32-noise change of the weights does not move a ranking here
        assert metrics[split] == pytest.approx(want[split], abs=1e-9), split
    assert (metrics["epochs"], metrics["best_epoch"]) == (want["epochs"], want["best_epoch"])


CATALOG_PARALLEL = ("--gin_bindings", "train.catalog_parallel = True")


@pytest.mark.parametrize("ranks,extra,loss", [
    (2, (), "ce"),
    (3, CATALOG_PARALLEL, "ce"),
    (2, (*CATALOG_PARALLEL, "--gin", "gin/loss/cce_exact.gin"), "cce_exact"),
])
def test_k_ranks_train_like_one_process(ranks, extra, loss, tiny, one_process, tmp_path):
    out = tmp_path / "run"
    proc = launch(ranks, out, tiny, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(result(out), one_process)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["loss"], metrics["world_size"], one_process[1]["world_size"]) == (loss, ranks, 1)
    # every rank's peak is recorded (None on the CPU); one process records no per-rank list
    assert metrics["peak_memory_gib_per_rank"] == [None] * ranks
    assert "peak_memory_gib_per_rank" not in one_process[1]
    assert proc.stdout.count("popularity") == 1  # rank 0 alone reports (and writes)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".lock", "best.pt", "checkpoint.pt", "config.gin", "history.jsonl", "log.txt", "metrics.json"])


def test_resume_with_the_same_ranks_and_refusal_with_others(tiny, one_process, tmp_path):
    """Catalog-parallel: the checkpoint is sharded (DCP), each rank reads its rows back; another
    number of ranks reshards it (tests/test_dcp_checkpoint.py), dropping catalog-parallel is refused."""
    out = tmp_path / "run"
    first = launch(2, out, tiny, *CATALOG_PARALLEL, "--gin_bindings", "train.epochs = 1")
    assert first.returncode == 0, first.stderr[-3000:]
    other = launch(2, out, tiny, "--resume")
    assert other.returncode != 0  # torchrun says 1 whatever its workers' statuses (here 2)
    assert "error: --resume: train.catalog_parallel is False here but the run trained with True" in other.stderr
    resumed = launch(2, out, tiny, *CATALOG_PARALLEL, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(result(out), one_process)


def test_resume_from_config_gin_keeps_the_loss_the_parallel_step_stood_in_for(tiny, tmp_path):
    """A catalog-parallel cce_exact run never calls ``cce`` (the step computes exact CE itself),
    so config.gin must still bind ``cce.filter_eps = None``: ``--resume`` with no --gin reads that
    file, and without the binding it was a ``cce`` run, refused (seen on the H200, 2026-12-02)."""
    out = tmp_path / "run"
    first = launch(2, out, tiny, *CATALOG_PARALLEL, "--gin", "gin/loss/cce_exact.gin",
                   "--gin_bindings", "train.epochs = 1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "cce.filter_eps = None" in (out / "config.gin").read_text()
    resumed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                              str(ROOT / "experiments" / "run.py"), "--resume", "--out", str(out),
                              "--gin_bindings", "train.epochs = 2"],
                             cwd=ROOT, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["loss"], metrics["epochs"]) == ("cce_exact", 2)


def test_compile_under_torchrun_is_refused(tiny, tmp_path):
    out = tmp_path / "run"
    proc = launch(2, out, tiny, "--gin_bindings", "train.compile = True")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert lines and all("train.compile and train.cuda_graph are not supported under torchrun" in line
                         for line in lines)
    assert not out.exists()


def _worker_pid(out: Path, rank: int) -> int | None:
    """The pid of torchrun's worker ``rank`` training into ``out`` (Linux /proc), if it runs."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmdline and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker through /proc")
def test_a_killed_rank_ends_the_run_and_the_last_checkpoint_resumes(tiny, tmp_path):
    from core import checkpoint as ckpt

    out = tmp_path / "run"
    long = ["--gin_bindings", "train.epochs = 500", "--gin_bindings", "train.patience = 500"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(ROOT / "experiments" / "run.py"), *tiny, *long, "--out", str(out)]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            deadline = time.monotonic() + 300  # a bound on a hang only
            while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            pid = _worker_pid(out, 1)
            assert pid is not None and proc.poll() is None, "the run ended before rank 1 could be killed"
            os.kill(pid, signal.SIGKILL)  # a crashed node, an OOM kill
            assert proc.wait(timeout=120) != 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    state = ckpt.load_torch(out / "checkpoint.pt")  # whole: checkpoints are written atomically
    assert 1 <= state["epoch"] < 500
    resumed = launch(2, out, tiny, "--resume", "--gin_bindings", f"train.epochs = {state['epoch'] + 1}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == state["epoch"] + 1
