"""experiments/bench/bench_epoch.py: variants, outputs and their columns, bad input, and that it
times what train() runs (same gin config -> the same losses)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiments import run
from experiments.bench import bench_epoch
from experiments.bench.bench_epoch import COLUMNS, BenchError, main, parse_variant


def test_parse_variant():
    base = parse_variant("base")
    assert (base.compile, base.cuda_graph) == (False, False)
    assert parse_variant("static+cudagraphs").compile == "reduce-overhead"
    assert parse_variant("static") == base  # base differs by its step's device count (bench_one)
    graph = parse_variant("graph", graph_min_bucket=64)
    assert graph.cuda_graph and graph.graph_min_bucket == 64
    assert parse_variant("static+compile").compile == "default"
    assert parse_variant("autotune").compile == "max-autotune-no-cudagraphs"
    both = parse_variant("graph+compile")  # the whole step graphed around a compiled body
    assert both.cuda_graph and both.compile == "default"
    for bad in ("fast", "base+static", "compile+cudagraphs", "", "graph+cudagraphs", "cce_direct"):
        with pytest.raises(BenchError):
            parse_variant(bad)


@pytest.fixture
def configs(tmp_path):
    """(the quickstart config, the same with CCE) and bindings for 300 tiny users on the CPU."""
    cce = tmp_path / "tiny_cce.gin"
    cce.write_text("include 'gin/quickstart.gin'\ninclude 'gin/loss/cce.gin'\n")
    bindings = ["dataset.synthetic_overrides = {'n_users': 300}", f"dataset.cache_dir = '{tmp_path / 'cache'}'",
                "train.device = 'cpu'", "train.batch_size = 64"]
    return ["gin/quickstart.gin", str(cce)], [a for b in bindings for a in ("--gin_bindings", b)]


def test_runs_on_cpu_and_writes_the_table(tmp_path, capsys, configs):
    (ce_gin, cce_gin), bindings = configs
    out = tmp_path / "bench"
    status = main(["--gin", ce_gin, "--gin", cce_gin, *bindings, "--variants", "base,static",
                   "--epochs", "2", "--sample-steps", "3", "--out", str(out)])
    assert status == 0
    captured = capsys.readouterr()
    assert "no CUDA device" in captured.err  # the one CPU line
    assert captured.out.splitlines()[0].startswith("| dataset | loss | variant | epoch s")

    frame = pd.read_csv(out / "results.csv")
    assert list(frame.columns) == COLUMNS
    assert list(zip(frame["loss"], frame["variant"])) == [
        ("ce", "base"), ("ce", "static"), ("cce", "base"), ("cce", "static")]
    assert (frame["dataset"] == "tiny").all()
    assert (frame["epoch_s"] > 0).all() and (frame["positions_per_s"] > 0).all()
    assert frame["peak_gib"].isna().all() and frame["syncs_per_step"].isna().all()  # CPU
    assert frame["start_gib"].isna().all()  # CPU: no device memory to count
    # one process: no torchrun, so the rank columns are that process's own
    assert (frame["world_size"] == 1).all() and not frame["catalog_parallel"].any()
    assert frame["rank_positions_per_s_min"].tolist() == frame["positions_per_s"].tolist()
    assert frame["rank_positions_per_s_max"].tolist() == frame["positions_per_s"].tolist()
    assert frame["peak_gib_min"].isna().all()
    assert frame["error"].isna().all()
    breakdown = frame[["batch_ms", "model_ms", "loss_ms", "optimizer_ms"]]
    assert (breakdown > 0).all().all()
    assert frame["step_ms"].tolist() == pytest.approx(breakdown.sum(axis=1).tolist())
    # Same data, same seed: every variant sees the same positions in the same number of steps.
    assert frame["positions_per_epoch"].nunique() == 1 and frame["steps_per_epoch"].nunique() == 1
    assert (frame["steps_per_s"] * frame["epoch_s"]).round().eq(frame["steps_per_epoch"]).all()
    # base (mask gather) and static (host counts) train bit for bit alike
    assert frame["train_loss"][0] == frame["train_loss"][1] and frame["train_loss"][2] == frame["train_loss"][3]

    report = json.loads((out / "results.json").read_text())
    assert {"device", "torch", "triton", "cut_cross_entropy", "dtype", "seed"} <= set(report["env"])
    assert len(report["rows"]) == 4 and report["args"]["epochs"] == 2
    assert (out / "results.md").read_text().startswith("| dataset | loss | variant |")


def test_it_times_what_train_runs(tmp_path, configs):
    """One gin config, two drivers: the benchmark's epoch-2 loss is train()'s, bit for bit."""
    (ce_gin, _), bindings = configs
    assert main(["--gin", ce_gin, *bindings, "--variants", "static", "--epochs", "2",
                 "--sample-steps", "1", "--out", str(tmp_path / "bench")]) == 0
    bench_loss = pd.read_csv(tmp_path / "bench" / "results.csv")["train_loss"][0]
    assert run.main(["--gin", ce_gin, *bindings, "--gin_bindings", "train.epochs = 2",
                     "--gin_bindings", "train.show_progress = False", "--out", str(tmp_path / "run")]) == 0
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert float(history[1]["train_loss"]) == pytest.approx(bench_loss, rel=1e-12, abs=0)


def test_a_failing_run_becomes_an_error_row(tmp_path, capsys, monkeypatch, configs):
    (ce_gin, cce_gin), bindings = configs
    real_build = bench_epoch.build

    def build(data, **kwargs):
        if kwargs["loss_fn"].__name__ == "cce":
            raise RuntimeError("kernel exploded\nsecond line")
        return real_build(data, **kwargs)

    monkeypatch.setattr(bench_epoch, "build", build)
    out = tmp_path / "bench"
    assert main(["--gin", ce_gin, "--gin", cce_gin, *bindings, "--variants", "static",
                 "--epochs", "1", "--sample-steps", "2", "--out", str(out)]) == 0
    frame = pd.read_csv(out / "results.csv")
    assert frame["error"].isna().tolist() == [True, False]  # CE ran; CCE failed and said why
    assert frame["loss"].tolist() == ["ce", "cce"]
    assert frame["error"][1] == "RuntimeError: kernel exploded"
    assert "error: RuntimeError: kernel exploded" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--gin", "gin/quickstart.gin", "--variants", "base+turbo"], "bad variant"),
    (["--gin", "gin/quickstart.gin", "--gin_bindings", "train.nope = 1"], "bad gin config"),
    (["--gin", "gin/quickstart.gin", "--gin_bindings", "train.device = 'tpu:9'"], "train.device"),
    ([], "--gin"),
    (["--gin", "gin/data/does_not_exist.gin"], "bad gin config"),
    (["--gin", "gin/quickstart.gin", "--profile-steps", "-1"], "--profile-steps"),
])
def test_bad_input_is_one_error_line_and_no_output(tmp_path, capsys, argv, message):
    assert_one_error_line(main, argv, message, tmp_path, capsys)


def assert_one_error_line(main, argv, message, tmp_path, capsys, *extra):
    """A benchmark's ``main(argv)`` exits 2 with one ``error:`` line and writes nothing."""
    out = tmp_path / "bench"
    assert main([*argv, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_profile_steps_write_a_kernel_table(tmp_path, configs):
    """On CUDA, --profile-steps profiles the step kernel by kernel (the graphed one too) into
    profile.md, and results.json keeps the numbers."""
    (ce_gin, _), bindings = configs
    i = bindings.index("train.device = 'cpu'")
    bindings = bindings[: i - 1] + bindings[i + 1 :]  # drop the CPU binding and its flag
    out = tmp_path / "bench"
    assert main(["--gin", ce_gin, *bindings, "--variants", "static,graph", "--epochs", "1",
                 "--sample-steps", "2", "--profile-steps", "3", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    for row in rows:
        prof = row["profile"]
        assert prof["steps"] == 3 and prof["total_ms"] > 0 and prof["kernels"]
        assert prof["total_ms"] == pytest.approx(sum(k["ms"] for k in prof["kernels"]) + prof["other_ms"])
    text = (out / "profile.md").read_text()
    assert text.count("GPU time per step") == 2 and "| ms/step | calls/step | kernel |" in text
