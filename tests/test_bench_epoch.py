"""experiments/bench/bench_epoch.py: variants, outputs and their columns, bad input, cce_direct on CUDA."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from experiments.bench import bench_epoch
from experiments.bench.bench_epoch import COLUMNS, BenchError, effective_variant, main, parse_variant


def test_parse_variant():
    assert parse_variant("base") == {"static": False, "mode": None, "cce_direct": False, "graph": False}
    assert parse_variant("static+cudagraphs+cce_direct") == {
        "static": True, "mode": "reduce-overhead", "cce_direct": True, "graph": False}
    assert parse_variant("graph") == {"static": True, "mode": None, "cce_direct": False, "graph": True}
    assert parse_variant("static+compile")["mode"] == "default"
    assert parse_variant("autotune")["mode"] == "max-autotune-no-cudagraphs"
    for bad in ("fast", "base+static", "compile+cudagraphs", "", "graph+cudagraphs", "graph+cce_direct"):
        with pytest.raises(BenchError):
            parse_variant(bad)
    assert effective_variant("static+cce_direct") == "static"
    assert effective_variant("cce_direct") == "base"


def test_runs_on_cpu_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "bench"
    status = main(["--preset", "tiny", "--n-users", "300", "--losses", "ce,cce",
                   "--variants", "base,static+cce_direct", "--epochs", "2", "--sample-steps", "3",
                   "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert status == 0
    captured = capsys.readouterr()
    assert "no CUDA device" in captured.err  # the one CPU line
    assert captured.out.splitlines()[0].startswith("| dataset | loss | variant | epoch s")

    frame = pd.read_csv(out / "results.csv")
    assert list(frame.columns) == COLUMNS
    # CE runs "static+cce_direct" as plain "static"; CCE runs it as asked.
    assert list(zip(frame["loss"], frame["variant"])) == [
        ("ce", "base"), ("cce", "base"), ("ce", "static"), ("cce", "static+cce_direct")]
    assert (frame["epoch_s"] > 0).all() and (frame["positions_per_s"] > 0).all()
    assert frame["peak_gib"].isna().all() and frame["syncs_per_step"].isna().all()  # CPU
    assert frame["error"].isna().all()
    breakdown = frame[["batch_ms", "model_ms", "loss_ms", "optimizer_ms"]]
    assert (breakdown > 0).all().all()
    assert frame["step_ms"].tolist() == pytest.approx(breakdown.sum(axis=1).tolist())
    # Same data, same seed: every variant sees the same positions in the same number of steps.
    assert frame["positions_per_epoch"].nunique() == 1 and frame["steps_per_epoch"].nunique() == 1
    assert (frame["steps_per_s"] * frame["epoch_s"]).round().eq(frame["steps_per_epoch"]).all()

    report = json.loads((out / "results.json").read_text())
    assert {"device", "torch", "triton", "cut_cross_entropy", "dtype", "seed"} <= set(report["env"])
    assert len(report["rows"]) == 4 and report["args"]["epochs"] == 2
    assert (out / "results.md").read_text().startswith("| dataset | loss | variant |")


def test_a_failing_run_becomes_an_error_row(tmp_path, capsys, monkeypatch):
    def broken(e, c, targets):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setattr(bench_epoch, "cce_direct", broken)
    out = tmp_path / "bench"
    assert main(["--preset", "tiny", "--n-users", "300", "--variants", "static+cce_direct",
                 "--epochs", "1", "--sample-steps", "2", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out)]) == 0
    frame = pd.read_csv(out / "results.csv")
    assert frame["error"].isna().tolist() == [True, False]  # CE ran; CCE failed and said why
    assert frame["error"][1] == "RuntimeError: kernel exploded"
    assert "error: RuntimeError: kernel exploded" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--preset", "tiny", "--variants", "base+turbo"], "bad variant"),
    (["--preset", "huge-like"], "unknown preset"),
    (["--preset", "tiny", "--losses", "ce,bce"], "--losses"),
    ([], "--preset"),
    (["--gin", "gin/data/does_not_exist.gin"], "bad data config"),
])
def test_bad_input_is_one_error_line_and_no_output(tmp_path, capsys, argv, message):
    assert_one_error_line(main, argv, message, tmp_path, capsys)


def assert_one_error_line(main, argv, message, tmp_path, capsys):
    """A benchmark's ``main(argv)`` exits 2 with one ``error:`` line and writes nothing."""
    out = tmp_path / "bench"
    assert main([*argv, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the CCE kernel)")
def test_cce_direct_equals_cce_on_cuda():
    gen = torch.Generator(device="cuda").manual_seed(0)
    e = torch.randn(1000, 64, device="cuda", generator=gen, requires_grad=True)
    c = torch.randn(5003, 64, device="cuda", generator=gen, requires_grad=True)
    targets = torch.randint(0, 5003, (1000,), device="cuda", generator=gen)
    results = []
    for fn in (bench_epoch.cce, bench_epoch.cce_direct):
        e.grad = c.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(e, c, targets)
        loss.backward()
        results.append((loss.detach(), e.grad.clone(), c.grad.clone()))
    # The same kernels; only the order of the kernels' locked accumulations may differ.
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-2 * a.abs().max().item())
