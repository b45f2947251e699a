"""core.recommendations and experiments/recommend.py: top-k in raw ids, agreeing with evaluation."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.data.prepare import Recipe, prepare
from core.data.shards import load_sequences
from core.model import SASRec
from core.recommendations import RecommendError, item_embeddings, recommend
from core.training import load_run, train_flat
from experiments import recommend as cli

FAST = dict(model_fn=functools.partial(SASRec, dim=16, n_blocks=1), batch_size=64, max_len=10,
            device="cpu", show_progress=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run on data with string user and item ids (raw ids must come back out)."""
    root = tmp_path_factory.mktemp("rec")
    rng = np.random.default_rng(0)
    lines = ["user,item,time"]
    for u in range(120):
        for t, i in enumerate(rng.choice(40, size=rng.integers(4, 12), replace=False)):
            lines.append(f"u{u:03d},sku-{i:02d},{1000 + t}")
    raw = root / "log.csv"
    raw.write_text("\n".join(lines) + "\n")
    data_dir = root / "data"
    prepare(Recipe(raw=raw, fmt="generic", min_user=3, min_item=3,
                   columns={"user": "user", "item": "item", "time": "time"}), data_dir)
    data = load_sequences(data_dir)
    out = root / "run"
    train_flat(data=data, out_dir=out, epochs=2, ks=(10,), **FAST)
    return out


def test_test_context_reproduces_the_runs_own_test_metrics(run_dir):
    run = load_run(run_dir, device="cpu")
    recs = recommend(run, k=10, context="test")
    data = run.data
    target = dict(zip(np.asarray(data.user_ids), np.asarray(data.item_ids)[data.test_targets()]))
    ranks = {u: r for u, r, i in zip(recs.user, recs["rank"], recs["item"]) if target[u] == i}
    n = data.n_users
    assert recs.user.nunique() == n and (recs.groupby("user").size() == 10).all()
    test = run.metrics["test"]
    assert len(ranks) / n == pytest.approx(test["HitRate@10"], abs=1e-12)
    assert sum(1 / math.log2(1 + r) for r in ranks.values()) / n == pytest.approx(test["NDCG@10"], abs=1e-9)
    assert sum(1 / r for r in ranks.values()) / n == pytest.approx(test["MRR@10"], abs=1e-9)
    assert recs["item"].nunique() / data.n_items == pytest.approx(test["Coverage@10"], abs=1e-12)


def test_raw_ids_history_masking_and_order(run_dir):
    run = load_run(run_dir, device="cpu")
    data = run.data
    recs = recommend(run, users=["u005", "u017"], k=5)
    assert list(recs.user.unique()) == ["u005", "u017"]
    assert recs["item"].str.startswith("sku-").all()
    for user, group in recs.groupby("user"):
        assert list(group["rank"]) == [1, 2, 3, 4, 5]
        assert group.score.is_monotonic_decreasing
        u = list(data.user_ids).index(user)
        seen = set(np.asarray(data.item_ids)[data.items[data.offsets[u]:data.offsets[u + 1]]])
        assert not seen & set(group["item"])  # "full" context: every known item is masked
    unmasked = recommend(run, users=["u005"], k=data.n_items, mask_history=False)
    assert len(unmasked) == data.n_items  # nothing left out without the mask


def test_unknown_users_and_bad_k_are_one_line_errors(run_dir):
    run = load_run(run_dir, device="cpu")
    with pytest.raises(RecommendError, match="not in the data"):
        recommend(run, users=["u005", "nobody"], k=5)
    with pytest.raises(RecommendError, match="k must be"):
        recommend(run, k=0)


def test_item_embeddings_score_like_the_model(run_dir):
    run = load_run(run_dir, device="cpu")
    vectors, ids = item_embeddings(run)
    assert vectors.shape == (run.data.n_items, run.model.catalog().shape[1]) and vectors.dtype == np.float32
    assert list(ids) == list(np.asarray(run.data.item_ids)[1:])


def test_cli_writes_csv_and_embeddings(run_dir, tmp_path, capsys):
    users = tmp_path / "users.txt"
    users.write_text("# users\nu001\n\nu002\n")
    out = tmp_path / "recs.csv"
    rc = cli.main(["--run", str(run_dir), "--users", str(users), "--k", "3", "--out", str(out),
                   "--embeddings", str(tmp_path / "emb"), "--device", "cpu"])
    assert rc == 0
    recs = pd.read_csv(out)
    assert list(recs.columns) == ["user", "rank", "item", "score"] and len(recs) == 6
    assert np.load(tmp_path / "emb" / "item_embeddings.npy").shape[0] == \
        len((tmp_path / "emb" / "item_ids.txt").read_text().splitlines())


@pytest.mark.parametrize("args, message", [
    (["--users", "USERS", "--k", "3"], "not in the data"),
    (["--all", "--k", "0"], "k must be"),
    (["--all", "--run", "nowhere"], "nowhere"),
])
def test_cli_bad_input_is_one_line_and_no_file(run_dir, tmp_path, capsys, args, message):
    users = tmp_path / "users.txt"
    users.write_text("u001\nghost\n")
    out = tmp_path / "recs.csv"
    argv = ["--run", str(run_dir), "--out", str(out), "--device", "cpu",
            *[str(users) if a == "USERS" else a for a in args]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not out.exists()


# --- issue 23.8: outputs and the device are checked before any work -----------------------------


def _read_only(monkeypatch, folder):
    """``folder`` as on a read-only mount (refused by os.access, as root too)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode))


@pytest.mark.parametrize("case, message", [
    ("out under a file", "is a file"), ("out on a read-only mount", "is not writable"),
    ("out is a folder", "is a folder"), ("embeddings at a file", "is a file"),
    ("embeddings on a read-only mount", "is not writable"), ("device cuda", "--device"),
])
def test_cli_refuses_bad_outputs_and_device_before_any_work(run_dir, tmp_path, capsys, monkeypatch,
                                                           case, message):
    import core.recommendations
    import core.training

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")
    monkeypatch.setattr(core.training, "load_run", no_work)
    monkeypatch.setattr(core.recommendations, "recommend", no_work)
    (tmp_path / "file").write_text("keep")
    (tmp_path / "ro").mkdir()
    out, emb, device = tmp_path / "recs.csv", tmp_path / "emb", "cpu"
    if case == "out under a file":
        out = tmp_path / "file" / "recs.csv"
    elif case == "out on a read-only mount":
        out = tmp_path / "ro" / "recs.csv"
    elif case == "out is a folder":
        out = tmp_path / "ro"
    elif case == "embeddings at a file":
        emb = tmp_path / "file"
    elif case == "embeddings on a read-only mount":
        emb = tmp_path / "ro" / "emb"
    else:
        device = "cuda:99" if torch.cuda.is_available() else "cuda"
    if "read-only" in case:
        _read_only(monkeypatch, tmp_path / "ro")
    argv = ["--run", str(run_dir), "--all", "--out", str(out), "--embeddings", str(emb), "--device", device]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"]  # nothing written
    assert (tmp_path / "file").read_text() == "keep" and list((tmp_path / "ro").iterdir()) == []


@pytest.mark.parametrize("users", ["u005", "12", 12])
def test_a_single_user_not_in_a_list_is_refused(run_dir, users):
    """Issue 23.10: users='12' recommended for users '1' and '2'."""
    run = load_run(run_dir, device="cpu")
    with pytest.raises(RecommendError, match=r"users must be a list of raw user ids \(e\.g\. \[") as err:
        recommend(run, users=users, k=5)
    assert "\n" not in str(err.value)
