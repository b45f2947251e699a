"""experiments/bench/bench_eval.py: a CPU run, its outputs, instrumented = real evaluation, bad input."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch

from core.data.batching import DeviceSequences, eval_order
from core.data.shards import SequenceData
from core.data.synthetic import PRESETS, generate
from core.evaluation import (
    DEFAULT_CHUNK,
    count_train_users,
    default_eval_batch_size,
    evaluate_model,
    evaluate_popularity,
)
from core.model import SASRec
from experiments.bench.bench_eval import COLUMNS, batch_runner, main, make_score, spread
from tests.test_bench_epoch import assert_one_error_line


def test_runs_on_cpu_and_writes_the_three_files(tmp_path, capsys):
    out = tmp_path / "bench"
    # 3 instrumented batches of a 1-batch split: the breakdown wraps around the split
    status = main(["--preset", "tiny", "--n-users", "300", "--sample-batches", "3",
                   "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert status == 0
    captured = capsys.readouterr()
    assert "no CUDA device" in captured.err
    header = "| dataset | users | items | path | scorer | split | batch | chunk | seconds |"
    assert captured.out.splitlines()[0].startswith(header)

    frame = pd.read_csv(out / "results.csv")
    assert list(frame.columns) == COLUMNS
    assert list(zip(frame["scorer"], frame["split"])) == [
        ("model", "valid"), ("model", "test"), ("popularity", "valid"), ("popularity", "test")]
    assert (frame["dataset"] == "tiny").all() and (frame["users"] == 300).all()
    n_items = int(frame["items"][0])
    assert (frame["path"] == "streaming").all()  # the default: what train() evaluates with
    assert (frame["batch_size"] == default_eval_batch_size(n_items)).all()  # train()'s default
    assert (frame["chunk_size"] == DEFAULT_CHUNK).all()
    assert (frame["n_batches"] == 1).all() and frame["error"].isna().all()
    assert (frame["seconds"] > 0).all()
    assert frame["users_per_s"].tolist() == pytest.approx((300 / frame["seconds"]).tolist())
    assert frame["peak_gib"].isna().all() and frame["syncs_per_batch"].isna().all()  # CPU
    phases = frame[["batch_ms", "score_ms", "history_ms", "metrics_ms"]]
    assert (phases > 0).all().all()
    assert frame["step_ms"].tolist() == pytest.approx(phases.sum(axis=1).tolist())

    report = json.loads((out / "results.json").read_text())
    assert {"device", "torch", "triton", "cut_cross_entropy", "dtype", "seed"} <= set(report["env"])
    assert len(report["rows"]) == 4 and report["args"]["preset"] == ["tiny"]
    model_valid, _, pop_valid, _ = (r["metrics"] for r in report["rows"])
    assert set(model_valid) == {"HitRate@10", "NDCG@10", "MRR@10", "Coverage@10", "Surprisal@10"}
    assert model_valid != pop_valid  # two scorers really ran
    assert (out / "results.md").read_text().startswith("| dataset | users | items |")


def test_options_select_rows_and_batches(tmp_path):
    out = tmp_path / "bench"
    assert main(["--preset", "tiny", "--n-users", "300", "--scorers", "popularity",
                 "--splits", "test", "--batch-size", "128", "--ks", "5,10", "--sample-batches", "0",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    frame = pd.read_csv(out / "results.csv")
    assert list(zip(frame["scorer"], frame["split"])) == [("popularity", "test")]
    assert frame["batch_size"][0] == 128 and frame["n_batches"][0] == 3
    assert frame["step_ms"].isna().all()  # no breakdown asked
    metrics = json.loads((out / "results.json").read_text())["rows"][0]["metrics"]
    assert "NDCG@5" in metrics and "NDCG@10" in metrics


def _small_data() -> SequenceData:
    params = {**PRESETS["tiny"], "n_users": 250, "n_items": 120}
    offsets, items = generate(**params, seed=3)
    return SequenceData(offsets=offsets, items=items, n_users=params["n_users"],
                        n_items=params["n_items"], attrs={})


def test_dense_and_streaming_in_one_call_give_the_same_metrics(tmp_path, capsys):
    """The before/after call: --path dense,streaming, small chunks (not a multiple of the catalog)."""
    out = tmp_path / "bench"
    assert main(["--preset", "tiny", "--n-users", "300", "--path", "dense,streaming", "--scorers", "model",
                 "--chunk-size", "37,100000", "--group-size", "4", "--ks", "1,5,10", "--sample-batches", "2",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    frame = pd.read_csv(out / "results.csv")
    assert list(zip(frame["path"], frame["split"])) == [
        ("dense", "valid"), ("dense", "test"), ("streaming", "valid"), ("streaming", "test"),
        ("streaming", "valid"), ("streaming", "test")]
    assert frame["error"].isna().all() and (frame["seconds"] > 0).all()
    n_items = int(frame["items"][0])
    assert frame["batch_size"].tolist() == [default_eval_batch_size(n_items, "dense")] * 2 + [
        default_eval_batch_size(n_items, "streaming")] * 4
    assert frame["chunk_size"].fillna(0).tolist() == [0, 0, 37, 37, 100000, 100000]
    metrics = [r["metrics"] for r in json.loads((out / "results.json").read_text())["rows"]]
    assert metrics[0] == metrics[2] == metrics[4] and metrics[1] == metrics[3] == metrics[5]
    assert "| dense | model | valid |" in table and "| streaming | model | test |" in table


@pytest.mark.parametrize("path", ["dense", "streaming"])
@pytest.mark.parametrize("scorer", ["model", "popularity"])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_instrumented_batches_rank_exactly_like_the_real_evaluation(scorer, split, path):
    """The breakdown times the same work as evaluate_model / evaluate_popularity."""
    data = _small_data()
    seqs = DeviceSequences.from_data(data, "cpu")
    torch.manual_seed(0)
    model = SASRec(n_items=data.n_items, max_len=20, dropout=0.5).eval()
    eval_args = dict(batch_size=64, max_len=20, mask_history=True, ks=(1, 10),
                     item_user_counts=data.train_item_user_counts(),
                     n_train_users=count_train_users(data), chunk_size=50, group_size=4)
    if scorer == "model":
        real = evaluate_model(model, model, seqs, split=split, amp=False, path=path, **eval_args)
    else:
        real = evaluate_popularity(seqs, split=split, path=path, **eval_args)
    score = make_score(scorer, model, amp=False, item_user_counts=eval_args["item_user_counts"])
    run, metrics = batch_runner(seqs, score, split=split, eval_args=eval_args, path=path)
    with torch.no_grad():
        for _ in range(-(-data.n_users // 64)):  # one pass over the split: 4 batches
            stamps = []
            run(stamps)
            assert len(stamps) == 5  # start + four phase ends
    assert metrics.compute() == real


def test_the_breakdown_runs_batches_spread_over_the_split():
    """Users are ranked shortest first: the instrumented batches are picked from the whole
    split (first and last included), and a picked batch ranks like the evaluation of its users."""
    assert spread(178, 5) == [0, 44, 88, 133, 177] and spread(3, 10) == [0, 1, 2] and spread(7, 1) == [0]
    data = _small_data()
    seqs = DeviceSequences.from_data(data, "cpu")
    torch.manual_seed(0)
    model = SASRec(n_items=data.n_items, max_len=20).eval()
    eval_args = dict(batch_size=16, max_len=20, mask_history=True, ks=(1, 10),
                     item_user_counts=data.train_item_user_counts(),
                     n_train_users=count_train_users(data), chunk_size=50, group_size=4)
    last = -(-data.n_users // 16) - 1
    run, metrics = batch_runner(seqs, make_score("model", model, amp=False, item_user_counts=None),
                                split="test", eval_args=eval_args, path="streaming", picks=[last])
    with torch.no_grad():
        run([])
    users = torch.from_numpy(eval_order(seqs)[last * 16:])
    assert metrics.compute() == evaluate_model(model, model, seqs, split="test", amp=False, users=users, **eval_args)


@pytest.mark.parametrize("argv,message", [
    (["--preset", "huge-like"], "unknown preset"),
    (["--preset", "tiny", "--scorers", "model,random"], "--scorers"),
    (["--preset", "tiny", "--splits", "train"], "--splits"),
    (["--preset", "tiny", "--batch-size", "0"], "--batch-size"),
    (["--preset", "tiny", "--path", "sparse"], "--path"),
    (["--preset", "tiny", "--chunk-size", "0"], "--chunk-size"),
    (["--preset", "tiny", "--chunk-size", "big"], "--chunk-size"),
    (["--preset", "tiny", "--ks", "ten"], "--ks"),
    (["--preset", "tiny", "--n-users", "300", "--ks", "100000"], "exceeds"),
    (["--gin", "gin/data/does_not_exist.gin"], "bad data config"),
])
def test_bad_input_is_one_error_line_and_no_output(tmp_path, capsys, argv, message):
    assert_one_error_line(main, argv, message, tmp_path, capsys, "--cache-dir", str(tmp_path / "cache"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_reports_memory_and_syncs(tmp_path):
    out = tmp_path / "bench"
    assert main(["--preset", "tiny", "--device", "cuda", "--sample-batches", "2", "--path", "dense,streaming",
                 "--profile-batches", "2",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    frame = pd.read_csv(out / "results.csv")
    assert frame["error"].isna().all()
    assert (frame["peak_gib"] > 0).all() and frame["syncs_per_batch"].notna().all()
    report = json.loads((out / "results.json").read_text())
    assert report["env"]["dtype"] == "bfloat16"
    assert len(report["rows"]) == 8 and all(r["profile"]["kernels"] for r in report["rows"])
    text = (out / "results.md").read_text()
    # the streaming path's label names the CUDA ways on (graphs by default, the prefilter)
    assert re.search(r"### tiny streaming( \([a-z, ]+\))? model valid \(chunk ", text), text[:2000]
    assert "### tiny dense model valid, per batch" in text
