"""Ranks compare their operative settings before training (issue 22, point 3): ranks started by
hand with another lr, batch size or schedule are refused with one line naming the setting and
both values, on every rank (2 CPU ranks, gloo)."""

from __future__ import annotations

import copy
from pathlib import Path

from core.parallel.collectives import DistContext
from core.training.ranks import Ranks, RanksDisagree
from tests.distributed_ranks import run_ranks

RECORD = {"loss": "ce", "settings": {"train.lr": 0.001, "train.batch_size": 64, "data.checksum": "abc"},
          "settings_by_group": {"schedule": {"epochs": 3, "patience": 2}, "seed": 0}}


def _agree(ctx: DistContext, changes: dict) -> str | None:
    record = copy.deepcopy(RECORD)
    if ctx.rank == 1:
        for path, value in changes.items():
            group, key = path
            (record if group is None else record[group])[key] = value
    try:
        Ranks(ctx).agree(record)
        return None
    except RanksDisagree as err:
        return str(err)


def test_ranks_with_the_same_settings_agree_and_any_difference_is_one_line_on_every_rank(tmp_path):
    assert run_ranks(_agree, 2, tmp_path, {}) == [None, None]
    lines = run_ranks(_agree, 2, tmp_path, {("settings", "train.lr"): 0.005})
    assert lines[0] == lines[1] == ("rank 1 runs with train.lr = 0.005 but rank 0 with 0.001: "
                                    "start every rank with the same config")
    lines = run_ranks(_agree, 2, tmp_path, {("settings_by_group", "schedule"): {"epochs": 4, "patience": 2}})
    assert lines[0] == lines[1] and "schedule.epochs = 4 but rank 0 with 3" in lines[0]
    lines = run_ranks(_agree, 2, tmp_path, {(None, "loss"): "flash_ce"})
    assert lines[0] == lines[1] and "loss = 'flash_ce' but rank 0 with 'ce'" in lines[0]


def test_one_process_compares_nothing():
    Ranks().agree(RECORD)  # no process group: nothing to compare, no collective


def test_the_collective_timeout_is_a_gin_setting(monkeypatch, tmp_path, capsys):
    """train.dist_timeout_s reaches the process group (it was hard-coded at 600 s); a bad
    value is one line and exit 2, before anything joins or trains."""
    import experiments.joined as joined
    from experiments import run

    seen = []
    monkeypatch.setattr(joined, "run_joined", lambda device, body, *, what, **kw: seen.append(kw) or 0)
    args = ["--gin", "gin/quickstart.gin", "--out", str(tmp_path / "r")]
    assert run.main([*args, "--gin_bindings", "train.dist_timeout_s = 42"]) == 0
    assert run.main(args) == 0
    assert seen == [{"timeout_s": 42.0}, {}]
    assert run.main([*args, "--gin_bindings", "train.dist_timeout_s = -1"]) == 2
    assert "train.dist_timeout_s must be a number of seconds > 0, got -1" in capsys.readouterr().err
    ctx = joined.join("cpu", timeout_s=7)  # one process: the context carries it all the same
    assert ctx.timeout_s == 7


def _see(ctx: DistContext, root: str) -> str | None:
    folder = Path(root) / f"node{ctx.rank}" / "run"  # node-local: only rank 0's exists
    if ctx.rank == 0:
        folder.mkdir(parents=True)
    try:
        Ranks(ctx).see_shared(folder if ctx.rank == 0 else Path(root) / "node1" / "run")
        return None
    except RanksDisagree as err:
        return str(err)


def test_a_run_folder_one_rank_cannot_see_is_one_line_on_every_rank(tmp_path):
    lines = run_ranks(_see, 2, tmp_path, str(tmp_path))
    assert lines[0] == lines[1] and "is not visible on rank(s) 1" in lines[0] and "shares" in lines[0]


def test_nccl_runs_get_fault_settings_that_raise_and_keep_the_users_own():
    from core.parallel.collectives import nccl_fault_env

    env = {"TORCH_NCCL_BLOCKING_WAIT": "0"}
    nccl_fault_env(env)
    assert env == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "TORCH_NCCL_BLOCKING_WAIT": "0"}
