"""CE / CCE numerical agreement: loss, dE and dC against a float64 oracle.

The criterion is the one Apple's own CCE tests use: a loss in a given dtype must agree with
the float64 oracle within a per-dtype tolerance, and CCE must agree with the oracle at least
as well as plain CE in the same dtype does, plus a small tolerance.

Tolerances (why these numbers, not tuned until green):
- float32: logits are sums of D <= 256 products, relative rounding ~ sqrt(D) * 2**-24 ~ 1e-6,
  and the log-sum-exp over V <= 2049 terms adds about as much, so 1e-5 on the loss and on
  the relative (Frobenius) error of each gradient leaves a 10x margin.
- bfloat16 / float16: the oracle gets the same rounded operands, so only arithmetic error
  counts. CE stores the logits in the operand dtype (bf16 keeps 8 bits: relative 2**-9 ~ 2e-3
  per logit, logits here are O(1-5)), and the backward matmuls take the softmax rounded to the
  operand dtype (again ~2**-9 relative per element): a few 1e-3, so 2e-2 on both. float16 has
  3 more mantissa bits and gets the same bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from core.losses import IGNORE_INDEX, cce, ce, flash_ce, flex_ce

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
# How much worse than same-dtype CE that CCE may be (Apple's tests add a similar slack).
CCE_SLACK = {torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 5e-3}

# Irregular shapes (N, V, D): odd sizes catch tiling and masking bugs that powers of two hide.
SHAPES = [(252, 507, 123), (97, 1031, 64), (1, 33, 7), (300, 2049, 256)]

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@dataclass
class Result:
    loss: torch.Tensor  # scalar, float64
    de: torch.Tensor  # (N, D), float64
    dc: torch.Tensor  # (V, D), float64


def make_inputs(n, v, d, dtype, device="cpu", ignore_frac=0.15, seed=0):
    """Random operands whose logits have a standard deviation of about 2, 15% ignored targets."""
    g = torch.Generator().manual_seed(seed)
    scale = (4.0 / d) ** 0.25  # var(logit) = d * scale**4 = 4
    e = (torch.randn(n, d, generator=g) * scale).to(dtype)
    c = (torch.randn(v, d, generator=g) * scale).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g)
    ignored = torch.rand(n, generator=g) < ignore_frac
    if n > 1:
        ignored[0] = False  # keep at least one scored position
    targets[ignored] = IGNORE_INDEX
    return e.to(device), c.to(device), targets.to(device)


def run_loss(loss_fn, e, c, targets) -> Result:
    e = e.detach().clone().requires_grad_(True)
    c = c.detach().clone().requires_grad_(True)
    loss = loss_fn(e, c, targets)
    loss.backward()
    return Result(loss.detach().double().cpu(), e.grad.double().cpu(), c.grad.double().cpu())


def oracle(e, c, targets) -> Result:
    """Plain-torch float64 softmax cross-entropy on the same (already rounded) operands."""

    def ce64(e, c, targets):
        return F.cross_entropy(e @ c.T, targets, ignore_index=IGNORE_INDEX)  # all float64

    return run_loss(ce64, e.double(), c.double(), targets)


def errors(got: Result, ref: Result) -> tuple[float, float, float]:
    """Absolute loss error and relative Frobenius errors of dE and dC."""

    def rel(a, b):
        return (torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-30)).item()

    return abs(got.loss - ref.loss).item(), rel(got.de, ref.de), rel(got.dc, ref.dc)


def assert_close_to_oracle(got: Result, ref: Result, tol: float, what: str):
    for name, err in zip(("loss", "dE", "dC"), errors(got, ref)):
        assert math.isfinite(err) and err <= tol, f"{what}: {name} error {err:.3g} > {tol:.3g}"


def assert_cce_agreement(cce_res: Result, ce_res: Result, ref: Result, slack: float):
    """CCE's error vs the oracle is at most CE's error in the same dtype plus a slack."""
    for name, e_cce, e_ce in zip(("loss", "dE", "dC"), errors(cce_res, ref), errors(ce_res, ref)):
        assert e_cce <= e_ce + slack, f"cce {name} error {e_cce:.3g} > ce's {e_ce:.3g} + {slack:.3g}"


# --------------------------------------------------------------------------------------------
# CPU (and any device): CE and the CCE entry point (its reference path off CUDA) vs the oracle


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N%d-V%d-D%d" % s)
@pytest.mark.parametrize("loss_fn", [ce, cce], ids=["ce", "cce"])
def test_loss_matches_float64_oracle(loss_fn, shape, dtype):
    e, c, t = make_inputs(*shape, dtype)
    assert_close_to_oracle(run_loss(loss_fn, e, c, t), oracle(e, c, t), TOL[dtype], loss_fn.__name__)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cce_agrees_with_ce_as_well_as_ce_agrees_with_oracle(dtype):
    e, c, t = make_inputs(252, 507, 123, dtype)
    ref = oracle(e, c, t)
    assert_cce_agreement(run_loss(cce, e, c, t), run_loss(ce, e, c, t), ref, CCE_SLACK[dtype])


def test_ignored_targets_get_no_gradient_and_do_not_count():
    e, c, t = make_inputs(252, 507, 123, torch.float32)
    ignored = t == IGNORE_INDEX
    assert ignored.any()
    for loss_fn in (ce, cce):
        res = run_loss(loss_fn, e, c, t)
        assert torch.all(res.de[ignored] == 0)
        kept = run_loss(loss_fn, e[~ignored], c, t[~ignored])
        assert abs(res.loss - kept.loss).item() < 1e-6


# --------------------------------------------------------------------------------------------
# The checks must be able to fail: deliberately wrong losses are caught by the same assertions.


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient scaled by 1.01: wrong in the backward pass only."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * 1.01


def _sharper_logits(e, c, targets):
    return F.cross_entropy((e @ c.T).float() * 1.001, targets, ignore_index=IGNORE_INDEX)


def _wrong_backward(e, c, targets):
    return ce(_ScaleGrad.apply(e), c, targets)


def _ignored_as_item_zero(e, c, targets):
    return ce(e, c, targets.clamp_min(0))


@pytest.mark.parametrize("bad_loss", [_sharper_logits, _wrong_backward, _ignored_as_item_zero])
def test_perturbed_losses_are_caught(bad_loss):
    e, c, t = make_inputs(252, 507, 123, torch.float32)
    ref = oracle(e, c, t)
    with pytest.raises(AssertionError):
        assert_close_to_oracle(run_loss(bad_loss, e, c, t), ref, TOL[torch.float32], "perturbed")
    with pytest.raises(AssertionError):
        assert_cce_agreement(
            run_loss(bad_loss, e, c, t), run_loss(ce, e, c, t), ref, CCE_SLACK[torch.float32]
        )


# --------------------------------------------------------------------------------------------
# GPU: the real Triton kernel (bf16 / fp16 operands), with and without the gradient filter.


# Both CUDA forward passes (core.losses.kernels.cce_split's and the library's); GPU_SHAPES adds a recommender
# shape (few positions, large catalog: many catalog slices) and a many-positions one.
FORWARDS = ["split", "library"]
GPU_SHAPES = SHAPES + [(560, 207_649, 64), (4099, 20_011, 64)]


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("forward", FORWARDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N%d-V%d-D%d" % s)
def test_cce_kernel_exact_gradients(shape, dtype, forward):
    e, c, t = make_inputs(*shape, dtype, device="cuda")
    ref = oracle(e, c, t)
    got = run_loss(lambda *a: cce(*a, filter_eps=None, forward=forward), e, c, t)
    assert_close_to_oracle(got, ref, TOL[dtype], "cce exact")
    assert_cce_agreement(got, run_loss(ce, e, c, t), ref, CCE_SLACK[dtype])


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("forward", FORWARDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N%d-V%d-D%d" % s)
def test_cce_kernel_default_filter(shape, dtype, forward):
    """The filter skips softmax blocks below eps(dtype)/32: the loss is untouched and the
    gradients move by at most the skipped probability mass, far below the dtype tolerance
    at these sizes (softmax entries here are ~1/V, mostly above the threshold)."""
    e, c, t = make_inputs(*shape, dtype, device="cuda")
    ref = oracle(e, c, t)
    got = run_loss(lambda *a: cce(*a, filter_eps="high", forward=forward), e, c, t)
    assert_close_to_oracle(got, ref, TOL[dtype], "cce filtered")
    assert_cce_agreement(got, run_loss(ce, e, c, t), ref, CCE_SLACK[dtype])


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("forward", FORWARDS)
def test_cce_under_autocast_casts_fp32_parameters(forward):
    """Under bf16 autocast the model hands CCE fp32 embeddings; the wrapper must cast them."""
    e, c, t = make_inputs(252, 507, 123, torch.float32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = run_loss(lambda *a: cce(*a, forward=forward), e, c, t)
    e16, c16 = e.bfloat16(), c.bfloat16()
    assert_close_to_oracle(got, oracle(e16, c16, t), TOL[torch.bfloat16], "cce autocast")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("filter_eps", ["high", None], ids=["filtered", "exact"])
@pytest.mark.parametrize("shape", GPU_SHAPES[-2:], ids=lambda s: "N%d-V%d-D%d" % s)
def test_split_forward_no_worse_than_library_at_recommender_shapes(shape, filter_eps):
    """Large catalogs, where the dtype tolerance above does not hold for CCE's dE at all: the
    library's backward accumulates dE in the operand dtype across V / BLOCK_V catalog tiles
    (1,600 at 207,649 items): 0.125 relative error in bf16 at N=560 on an H200, with either
    forward pass. And most softmax entries fall below the filter (mean probability 1/V << eps/32), so the
    filtered gradients are far from exact by design. The split forward feeds the same backward
    kernel, so its result must be as close to the float64 oracle as the library's own (the
    vocabulary orderings may differ in ties, hence the small slack); the loss itself is exact."""
    e, c, t = make_inputs(*shape, torch.bfloat16, device="cuda")
    ref = oracle(e, c, t)
    split = errors(run_loss(lambda *a: cce(*a, filter_eps=filter_eps, forward="split"), e, c, t), ref)
    library = errors(run_loss(lambda *a: cce(*a, filter_eps=filter_eps, forward="library"), e, c, t), ref)
    assert split[0] <= TOL[torch.bfloat16], f"loss error {split[0]:.3g}"
    for name, got, lib in zip(("dE", "dC"), split[1:], library[1:]):
        assert got <= 1.1 * lib + 1e-3, f"split {name} error {got:.3g} vs library's {lib:.3g}"


# --------------------------------------------------------------------------------------------
# GPU: flash_ce (the project's own kernel, exact gradients) and the FlexAttention loss.

# D in 32..256 on top of the irregular SHAPES; GPU_SHAPES' recommender shapes (many catalog slices).
FLASH_SHAPES = GPU_SHAPES + [(513, 4099, 32), (600, 3001, 128), (2050, 1031, 256)]


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", FLASH_SHAPES, ids=lambda s: "N%d-V%d-D%d" % s)
def test_flash_ce_matches_float64(shape, dtype):
    """Same tolerances as CCE; unlike CCE's backward, dE is accumulated in fp32, so the dtype
    tolerance holds at 207,649 items too."""
    e, c, t = make_inputs(*shape, dtype, device="cuda")
    ref = oracle(e, c, t)
    got = run_loss(flash_ce, e, c, t)
    assert_close_to_oracle(got, ref, TOL[dtype], "flash_ce")
    assert_cce_agreement(got, run_loss(ce, e, c, t), ref, CCE_SLACK[dtype])
    assert torch.all(got.de[(t == IGNORE_INDEX).cpu()] == 0)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N%d-V%d-D%d" % s)
def test_flash_ce_float32_operands(shape):
    """fp32 operands without autocast: IEEE fp32 dots, the fp32 tolerance."""
    e, c, t = make_inputs(*shape, torch.float32, device="cuda")
    assert_close_to_oracle(run_loss(flash_ce, e, c, t), oracle(e, c, t), TOL[torch.float32], "flash_ce fp32")


@pytest.mark.gpu
@requires_cuda
def test_flash_ce_under_autocast_keeps_fp32_catalog_gradient():
    e, c, t = make_inputs(252, 507, 123, torch.float32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = run_loss(flash_ce, e, c, t)
    assert_close_to_oracle(got, oracle(e.bfloat16(), c.bfloat16(), t), TOL[torch.bfloat16], "flash_ce autocast")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("n", [0, 5])
def test_flash_ce_without_scored_targets_matches_ce(n):
    e, c, _ = make_inputs(max(n, 1), 300, 64, torch.bfloat16, device="cuda")
    e, t = e[:n], torch.full((n,), IGNORE_INDEX, device="cuda")
    got, want = run_loss(flash_ce, e, c, t), run_loss(ce, e, c, t)
    assert got.loss.isnan() and want.loss.isnan()
    assert got.de.shape == want.de.shape and not got.de.any() and not got.dc.any()


# Broken kernels of tests/test_flash_ce.py's MUTANTS compiled for the GPU (names checked on the
# CPU below: three names here had gone stale when their mutants were renamed).
GPU_MUTANTS = ["de_no_target", "dc_no_onehot", "dc_onehot_a_tile_off", "fwd_last_tile_unmasked",
               "fwd_last_tile_skipped"]


def test_the_gpu_mutants_exist():
    from tests.test_flash_ce import MUTANTS

    assert set(GPU_MUTANTS) <= {m[0] for m in MUTANTS}


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("name", GPU_MUTANTS)
def test_flash_ce_broken_kernels_are_caught_on_the_gpu(name, monkeypatch, tmp_path):
    """The deliberately broken kernels of tests/test_flash_ce.py, compiled for the GPU."""
    from tests.test_flash_ce import install_kernel_mutant

    install_kernel_mutant(name, tmp_path, monkeypatch)
    caught = 0
    for shape in [(252, 507, 123), (97, 1031, 64), (50, 33, 32)]:  # V = 33: mostly padding
        e, c, t = make_inputs(*shape, torch.bfloat16, device="cuda")
        try:
            assert_close_to_oracle(run_loss(flash_ce, e, c, t), oracle(e, c, t), TOL[torch.bfloat16], name)
        except AssertionError:
            caught += 1
    assert caught, f"mutant {name} passed"


@pytest.mark.gpu
@requires_cuda
def test_flash_ce_step_is_capturable_as_a_cuda_graph():
    """No host sync: forward + backward captured once, replayed on new data, equals eager."""
    e, c, t = make_inputs(300, 2049, 64, torch.bfloat16, device="cuda")
    e, c = e.requires_grad_(), c.requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (compiles the kernels) off the capture
        for _ in range(2):
            e.grad = c.grad = None
            flash_ce(e, c, t).backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    e.grad = c.grad = None
    with torch.cuda.graph(graph):
        loss = flash_ce(e, c, t)
        loss.backward()
    e2, c2, t2 = make_inputs(300, 2049, 64, torch.bfloat16, device="cuda", seed=1)
    with torch.no_grad():
        e.copy_(e2), c.copy_(c2), t.copy_(t2)
    graph.replay()
    want = run_loss(flash_ce, e2, c2, t2)
    assert torch.equal(loss.detach().double().cpu(), want.loss)
    assert torch.equal(e.grad.double().cpu(), want.de) and torch.equal(c.grad.double().cpu(), want.dc)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("shape", [(252, 507, 64), (560, 207_649, 64)], ids=lambda s: "N%d-V%d-D%d" % s)
def test_flex_ce_matches_float64(shape):
    e, c, t = make_inputs(*shape, torch.bfloat16, device="cuda")
    assert_close_to_oracle(run_loss(flex_ce, e, c, t), oracle(e, c, t), TOL[torch.bfloat16], "flex_ce")
