"""kernels_bench: inputs, provider correctness gate, measurement, report and the CLI's outputs.

CPU tests use tiny shapes; the CLI runs end to end into tmp_path with ``--rep-ms 1``. Out of
memory is simulated by a registered provider that raises ``torch.cuda.OutOfMemoryError``.
"""

from __future__ import annotations

import math
import sys
import types

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from core.checkpoint import save_torch
from core.losses import IGNORE_INDEX, ce
from kernels_bench import plots, sweep_vocab
from kernels_bench.inputs import InputError, fit_catalog, load_catalog, make_inputs
from kernels_bench.measure import Measurement, floor_ms, is_oom, measure
from kernels_bench.providers import (
    PROVIDERS,
    Provider,
    Setup,
    check_provider,
    mode_callable,
    setup_liger,
)
from kernels_bench.report import summarize

CPU = torch.device("cpu")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _gate_inputs(kind: str, *, v: int = 1000, d: int = 64):
    b = make_inputs(kind, n=256, v=v, d=d, device=CPU, seed=1)
    targets = b.targets.clone()
    targets[::8] = IGNORE_INDEX
    return b, targets


# ---- inputs ----


def test_trained_inputs_are_calibrated_and_aligned():
    b = make_inputs("trained", n=512, v=4096, d=32, device=CPU, seed=0, target_prob=0.3)
    assert b.e.shape == (512, 32) and b.c.shape == (4096, 32) and b.targets.shape == (512,)
    assert abs(b.target_prob - 0.3) < 0.05
    cosine = F.cosine_similarity(b.e, b.c[b.targets]).mean()
    assert cosine > 0.8
    r = make_inputs("random", n=512, v=4096, d=32, device=CPU, seed=0)
    assert r.target_prob < 0.01  # an untrained head: nearly flat softmax


def test_checkpoint_catalog_is_loaded_tiled_and_used(tmp_path):
    weight = torch.randn(11, 8)  # n_items + 1 rows, row 0 = padding
    path = tmp_path / "best.pt"
    save_torch({"model": {"item_emb.weight": weight}, "epoch": 3}, path)
    catalog = load_catalog(path)
    assert torch.equal(catalog, weight[1:])
    assert torch.equal(fit_catalog(catalog, 25)[20:], catalog[:5])  # tiled
    assert fit_catalog(catalog, 4).shape == (4, 8)  # truncated
    b = make_inputs("trained", n=64, v=25, d=8, device=CPU, seed=0, catalog=catalog)
    assert torch.equal(b.c, fit_catalog(catalog, 25))
    with pytest.raises(InputError, match="D=8"):
        make_inputs("trained", n=64, v=25, d=16, device=CPU, seed=0, catalog=catalog)
    save_torch({"model": {}}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="item_emb.weight"):
        load_catalog(tmp_path / "bad.pt")
    torch.save({"model": {"item_emb.weight": weight}}, tmp_path / "bare.pt")  # no digest: not trusted
    with pytest.raises(InputError, match="bare.pt: written without an integrity digest"):
        load_catalog(tmp_path / "bare.pt")


# ---- providers: correctness gate ----


@pytest.mark.parametrize("kind", ["random", "trained"])
@pytest.mark.parametrize("name", ["ce_fp32", "ce_bf16", "cce", "cce_torch_compile"])
def test_cpu_providers_pass_the_gate(name, kind):
    b, targets = _gate_inputs(kind)
    check = check_provider(name, b.e, b.c, targets)
    assert check.passed, check
    assert check.grad_c_err < check.tol_grad and check.loss_err < check.tol_loss


def test_gate_rejects_wrong_and_crashing_providers():
    b, targets = _gate_inputs("trained")

    def scaled(e, c, t):
        e_ = e.detach().clone().requires_grad_()
        c_ = c.detach().clone().requires_grad_()
        return Setup(lambda: 1.05 * ce(e_, c_, t), (e_, c_))

    def crashing(e, c, t):
        raise RuntimeError("kernel exploded")

    wrong = check_provider("scaled", b.e, b.c, targets, provider=Provider(scaled, torch.float32))
    assert not wrong.passed and wrong.loss_err > wrong.tol_loss
    crash = check_provider("crash", b.e, b.c, targets, provider=Provider(crashing, torch.float32))
    assert not crash.passed and "kernel exploded" in crash.error


def _fake_liger(monkeypatch):
    """A stand-in Liger module with the real weight-first forward signature."""

    class FakeLoss:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def __call__(self, lin_weight, _input, target, bias=None):
            logits = _input @ lin_weight.T  # (N, V) only if the weight came first
            return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)

    module = types.ModuleType("liger_kernel.transformers")
    module.LigerFusedLinearCrossEntropyLoss = FakeLoss
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", module)


def test_liger_setup_passes_the_weight_first(monkeypatch):
    _fake_liger(monkeypatch)
    b, targets = _gate_inputs("random", v=300)
    assert check_provider("liger", b.e, b.c, targets).passed

    def swapped(e, c, t):  # the trap: the natural (input, weight) order
        s = setup_liger(e, c, t)
        e_, c_ = s.leaves
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        return Setup(lambda: LigerFusedLinearCrossEntropyLoss()(e_, c_, t), s.leaves)

    bad = check_provider("liger", b.e, b.c, targets, provider=Provider(swapped, torch.bfloat16))
    assert not bad.passed


# ---- measurement ----


def test_measure_cpu_and_modes():
    b = make_inputs("random", n=64, v=128, d=16, device=CPU, seed=0)
    setup = PROVIDERS["ce_fp32"].setup(b.e, b.c, b.targets)
    for mode in ("fw", "bw", "fw-bw"):
        m = measure(mode_callable(setup, mode), device=CPU, grad_to_none=setup.leaves, rep_ms=1)
        assert 0 < m.p20_ms <= m.time_ms <= m.p80_ms
        assert math.isnan(m.memory_mib)
    fn = mode_callable(setup, "bw")  # the retained graph runs backward again and again
    fn()
    fn()
    assert setup.leaves[1].grad is not None and setup.leaves[1].grad.shape == (128, 16)
    with pytest.raises(ValueError, match="unknown mode"):
        mode_callable(setup, "backward")


def test_floor_and_oom_detection():
    # fw-bw = 3 matmuls of 2*N*V*D FLOPs: 3 * 2 * 1000 * 1000 * 100 = 6e8 FLOP at 1 TFLOP/s.
    assert floor_ms(n=1000, v=1000, d=100, mode="fw-bw", tflops=1.0) == pytest.approx(0.6)
    assert floor_ms(n=1000, v=1000, d=100, mode="fw", tflops=1.0) == pytest.approx(0.2)
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))


# ---- report ----


def _rows(provider, kind, times, mems, statuses):
    rows = []
    for v, t, mem, s in zip((1024, 4096, 16384), times, mems, statuses):
        base = dict(provider=provider, mode="fw-bw", V=v, N=8, D=4, status=s, inputs=kind)
        base.update(device="GPU", matmul_tflops=100.0, floor_ms=0.01)
        rows += [dict(base, metric="time_ms", value=t), dict(base, metric="memory_mib", value=mem)]
    return rows


def test_summary_crossover_memory_ratio_and_fit():
    nan = math.nan
    df = pd.DataFrame(
        _rows("ce_bf16", "trained", (1.0, 2.0, nan), (100.0, 400.0, nan), ("ok", "ok", "oom"))
        + _rows("cce", "trained", (0.5, 3.0, 5.0), (10.0, 20.0, 40.0), ("ok", "ok", "ok"))
    )
    text = summarize(df)
    # cce wins at 1024, loses at 4096, wins at 16384 because CE does not fit there.
    assert "from V=16,384 on (first at V=1,024)" in text
    assert "1,024: 10x" in text and "4,096: 20x" in text
    assert "ce_bf16 4,096" in text and "cce 16,384" in text


# ---- the CLI ----


def _cli(tmp_path, *extra):
    out = tmp_path / "out"
    # --max-ms inf: no point is skipped for its (wall-clock) time unless a test asks for it
    argv = ["--out", str(out), "--n", "32", "--dim", "16", "--warmup-ms", "0", "--rep-ms", "1",
            "--max-ms", "inf"]
    return out, sweep_vocab.main(argv + ["--no-progress", *extra])


def test_cli_writes_every_output(tmp_path, capsys):
    out, rc = _cli(tmp_path, "--vocab", "64,2^7", "--providers", "ce_fp32,ce_bf16")
    assert rc == 0
    printed = capsys.readouterr().out
    assert "CPU sweep" in printed and "largest V that ran" in printed
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns) == sweep_vocab.COLUMNS
    # 2 input kinds x 2 V x 2 providers x 3 modes x 2 metrics
    assert len(df) == 48 and set(df.status) == {"ok"}
    assert set(df.metric) == {"time_ms", "memory_mib"} and set(df.V) == {64, 128}
    times = df[df.metric == "time_ms"]
    assert (times.value > 0).all() and times.floor_ms.notna().all()
    assert set(df[df.provider == "ce_bf16"].dtype) == {"bfloat16"}
    assert (out / "time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # CPU: no memory measured, so no (empty) memory.png, and the summary says why
    assert not (out / "memory.png").exists()
    assert "memory.png not written" in (out / "summary.txt").read_text()
    table = (out / "table.md").read_text()
    assert "| V | floor | ce_fp32 | ce_bf16 |" in table and "**trained inputs**" in table
    assert pd.read_csv(out / "correctness.csv").passed.all()
    assert (out / "summary.txt").exists() and (out / "config.json").exists()
    assert not (tmp_path / "out.partial").exists()


def test_memory_plot_only_where_memory_was_measured(tmp_path):
    base = dict(provider="p", mode="fw-bw", N=8, D=4, status="ok", inputs="random", device="GPU",
                p20=1.0, p80=1.0, floor_ms=0.1)
    rows = [dict(base, V=v, metric=metric, value=value) for v in (64, 128)
            for metric, value in (("time_ms", 1.0), ("memory_mib", math.nan))]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    assert [p.name for p in plots.make_plots(tmp_path / "results.csv", tmp_path)] == ["time.png"]
    assert not (tmp_path / "memory.png").exists()
    rows[1]["value"] = rows[3]["value"] = 5.0  # measured (a GPU sweep)
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    written = plots.make_plots(tmp_path / "results.csv", tmp_path)
    assert [p.name for p in written] == ["time.png", "memory.png"]
    assert (tmp_path / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bar_only_on_a_terminal(tmp_path, capsys, monkeypatch, terminal):
    """Redirected stderr (a log file) gets plain lines, never tqdm's carriage-return redraws."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    argv = ["--out", str(tmp_path / "out"), "--n", "32", "--dim", "16", "--warmup-ms", "0",
            "--rep-ms", "1", "--max-ms", "inf", "--vocab", "64,128", "--providers", "ce_fp32",
            "--inputs", "random", "--modes", "fw"]
    assert sweep_vocab.main(argv) == 0
    err = capsys.readouterr().err
    if terminal:
        assert "\r" in err and "sweep" in err  # the bar
    else:
        assert "\r" not in err
        assert err.splitlines() == ["sweep: random inputs, V=64 done (1/2 points)",
                                    "sweep: random inputs, V=128 done (2/2 points)"]


def test_cli_records_oom_and_goes_on(tmp_path, monkeypatch):
    def oom_above_100(e, c, t):
        e_ = e.detach().clone().requires_grad_()
        c_ = c.detach().clone().requires_grad_()

        def forward():
            if c_.shape[0] > 100:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
            return ce(e_, c_, t)

        return Setup(forward, (e_, c_))

    monkeypatch.setitem(PROVIDERS, "fake_oom", Provider(oom_above_100, torch.float32))
    monkeypatch.setattr(sweep_vocab, "CHECK_V", 50)  # the gate itself must fit
    out, rc = _cli(
        tmp_path, "--vocab", "64,128,256", "--providers", "ce_fp32,fake_oom", "--inputs", "random"
    )
    assert rc == 0
    df = pd.read_csv(out / "results.csv")
    fake = df[(df.provider == "fake_oom") & (df.metric == "time_ms")]
    status = fake.groupby("V").status.agg(set).to_dict()
    assert status == {64: {"ok"}, 128: {"oom"}, 256: {"skipped"}}
    assert fake[fake.V == 256].note.str.contains("out of memory at V=128").all()
    assert set(df[df.provider == "ce_fp32"].status) == {"ok"}
    assert "OOM" in (out / "table.md").read_text()


def test_projection_scales_the_slowest_mode_linearly():
    last = {("random", "p", "fw"): (64, 10.0), ("random", "p", "bw"): (128, 30.0),
            ("random", "q", "fw"): (64, 99.0), ("trained", "p", "fw"): (64, 99.0)}
    assert sweep_vocab.projected_ms(last, "random", "p", 256) == (60.0, 128)  # bw: 30 * 256/128
    assert sweep_vocab.projected_ms(last, "random", "r", 256) == (0.0, 0)  # nothing measured yet


def test_cli_skips_providers_projected_too_slow(tmp_path, monkeypatch):
    """The measured times are injected (10 ms per 64 catalog rows), so no wall-clock is read:
    V=64 takes 10 ms, V=128 is projected at 20 ms <= 25 and runs, V=512 is projected at 80 ms."""
    sizes = []

    def sized(e, c, t):  # remembers the catalog size of the point about to be measured
        sizes.append(c.shape[0])
        return PROVIDERS["ce_fp32"].setup(e, c, t)

    def fake_measure(fn, **kwargs):
        fn()  # the provider still runs once
        ms = 10.0 * sizes[-1] / 64
        return Measurement(ms, ms, ms, math.nan)

    monkeypatch.setitem(PROVIDERS, "sized", Provider(sized, torch.float32))
    monkeypatch.setattr(sweep_vocab, "measure", fake_measure)
    monkeypatch.setattr(sweep_vocab, "CHECK_V", 50)
    args = ["--vocab", "64,128,512,1024", "--providers", "sized", "--inputs", "random", "--max-ms", "25"]
    out, rc = _cli(tmp_path, *args)
    assert rc == 0
    df = pd.read_csv(out / "results.csv")
    times = df[df.metric == "time_ms"]
    status = times.groupby("V").status.agg(set).to_dict()
    assert status == {64: {"ok"}, 128: {"ok"}, 512: {"skipped"}, 1024: {"skipped"}}
    assert set(times[times.V == 128].value) == {20.0}
    note = "projected 80 ms > --max-ms 25 (from V=128)"
    assert (times[times.V == 512].note == note).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--providers", "nope"], "unknown provider"),
        (["--providers", "liger"], "cannot run here"),
        (["--vocab", "12,abc"], "not an integer"),
        (["--modes", "fw,backward"], "unknown mode"),
        (["--checkpoint", "missing.pt"], "checkpoint not found"),
    ],
)
def test_cli_bad_input_is_one_error_line(tmp_path, capsys, extra, message):
    if extra[:2] == ["--providers", "liger"] and torch.cuda.is_available():
        pytest.skip("liger may run on this machine")
    out, rc = _cli(tmp_path, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.gpu
@requires_cuda
def test_gpu_quick_sweep(tmp_path):
    out, rc = _cli(tmp_path, "--vocab", "1024,20729", "--providers", "ce_bf16,cce,cce_exact")
    assert rc == 0
    df = pd.read_csv(out / "results.csv")
    assert set(df.status) == {"ok"}
    assert df[df.metric == "memory_mib"].value.notna().all()
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tune_eval_kernel_without_cuda_says_so_in_one_line(capsys, monkeypatch):
    """The fused evaluation's tile sweep is CUDA-only: one error line and exit 2 on a CPU."""
    from kernels_bench import tune_eval_kernel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tune_eval_kernel.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: tune_eval_kernel needs a CUDA GPU")


@pytest.mark.parametrize("argv,error", [([], "error: eval_gemm needs a CUDA GPU"),
                                        (["--chunk", "0"], "error: --users, --items, --d and --chunk")])
def test_eval_gemm_refuses_in_one_line(argv, error, capsys, monkeypatch, tmp_path):
    """The scoring-GEMM layout benchmark: one error line and exit 2 (no CUDA, bad sizes), no output."""
    from kernels_bench import eval_gemm

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert eval_gemm.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(error)
    assert not (tmp_path / "out").exists()
