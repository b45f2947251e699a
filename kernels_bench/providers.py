"""Loss providers for the microbenchmark: one setup function each, plus a registry. Registered
losses share ``loss_setup`` and are named by ``core.losses.loss_name``, CUDA-only as the loss
registry says (``loss_facts``); the rest (the library's reference, Liger) by hand.

A setup function takes the float32 master operands ``e`` (N, D), ``c`` (V, D) and ``targets``
(N,), makes its own leaf copies in its dtype (``requires_grad``), and returns a ``Setup``: a
zero-argument ``forward`` computing the mean loss and the leaves whose gradients the backward
fills. ``mode_callable`` turns a ``Setup`` into the callable timed for a mode:

- ``fw``: the forward with autograd recording, as in training (for Liger this includes its
  gradient computation, which it does inside the forward).
- ``bw``: the backward only. The forward runs once outside the timed region and every call
  re-runs ``loss.backward(retain_graph=True)``, Liger-Kernel's benchmark convention. Liger's
  backward only rescales what its forward computed; torch.compile'd backwards
  (``cce_torch_compile``, and ``cce`` on a CPU) refuse ``retain_graph`` because they donate
  their saved buffers, so the sweep records them as skipped.
- ``fw-bw``: a full training step of the loss.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch

from core.losses import IGNORE_INDEX, cce, ce, flash_ce, flex_ce, loss_facts, loss_name, sampled_ce
from core.losses.sampled import draw_negatives, sampled_softmax_loss

MODES = ("fw", "bw", "fw-bw")


@dataclass(frozen=True)
class Setup:
    """A provider bound to one set of operands."""

    forward: Callable[[], torch.Tensor]  # () -> scalar loss, recording autograd
    leaves: tuple[torch.Tensor, torch.Tensor]  # (e (N, D), c (V, D)) in the provider's dtype
    # (e64, c64) -> the float64 loss this provider computes; None: full-catalog CE.
    reference: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Provider:
    """Registry entry: how to build a provider and where it can run."""

    setup: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Setup]
    dtype: torch.dtype  # dtype of the operands it receives
    cuda_only: bool = False
    module: str | None = None  # optional package it needs
    description: str = ""
    logit_columns: int | None = None  # logits per row when not V (sampled: K + 1): the floor's V


def _leaves(e: torch.Tensor, c: torch.Tensor, dtype: torch.dtype):
    # copy=True: for float32 a plain .to() would hand back the master tensor itself.
    return (
        e.detach().to(dtype, copy=True).requires_grad_(),
        c.detach().to(dtype, copy=True).requires_grad_(),
    )


def loss_setup(loss_fn: Callable, dtype: torch.dtype) -> Callable[..., Setup]:
    """The setup of a registered loss (a ``functools.partial`` fixing its settings) in ``dtype``."""

    def setup(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> Setup:
        e_, c_ = _leaves(e, c, dtype)
        return Setup(lambda: loss_fn(e_, c_, targets), (e_, c_))

    return setup


def _of_loss(loss_fn: Callable, dtype: torch.dtype, *, suffix: str = "", cuda_only: bool | None = None,
             **kwargs) -> tuple[str, Provider]:
    """(name, provider) of a registered loss: named by ``loss_name`` (plus ``suffix`` where one
    loss runs in several dtypes), CUDA-only as the registry says unless ``cuda_only`` overrides."""
    only = loss_facts(loss_fn).cuda_only if cuda_only is None else cuda_only
    return loss_name(loss_fn) + suffix, Provider(loss_setup(loss_fn, dtype), dtype, cuda_only=only, **kwargs)


def setup_cce_torch_compile(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> Setup:
    """cut-cross-entropy's own reference: torch.compile'd logits + CE."""
    from cut_cross_entropy import linear_cross_entropy

    e_, c_ = _leaves(e, c, torch.bfloat16)

    def forward() -> torch.Tensor:
        return linear_cross_entropy(
            e=e_, c=c_, targets=targets, ignore_index=IGNORE_INDEX, impl="torch_compile"
        )

    return Setup(forward, (e_, c_))


def _sampled_reference(e64, c64, targets, negatives) -> torch.Tensor:
    """float64 sampled softmax from the FULL logits' columns (another path than the loss's
    gather-then-multiply): the target's, then the negatives', accidental hits masked."""
    keep = targets != IGNORE_INDEX
    t = targets[keep]
    logits = e64[keep] @ c64.T  # (n, V)
    neg = logits[:, negatives].masked_fill(negatives == t.unsqueeze(1), float("-inf"))
    sampled = torch.cat([logits.gather(1, t.unsqueeze(1)), neg], dim=1)  # (n, K + 1)
    return torch.nn.functional.cross_entropy(sampled, torch.zeros_like(t))


def setup_sampled_ce(n_negatives: int) -> Callable[..., Setup]:
    """Sampled softmax CE over ``n_negatives`` uniform negatives, bf16 operands (as autocast).

    Each forward draws its own negatives, as each training step does (the draw is part of the
    cost); the correctness gate compares with the float64 sampled loss on the last forward's
    negatives, since this loss is not full CE.
    """

    def setup(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> Setup:
        e_, c_ = _leaves(e, c, torch.bfloat16)
        last: dict[str, torch.Tensor] = {}

        def forward() -> torch.Tensor:
            last["negatives"] = draw_negatives(n_negatives, c_.shape[0], device=e_.device)
            return sampled_softmax_loss(e_, c_, targets, last["negatives"])

        return Setup(forward, (e_, c_),
                     lambda e64, c64: _sampled_reference(e64, c64, targets, last["negatives"]))

    return setup


def _sampled_provider(n_negatives: int) -> tuple[str, Provider]:
    """Named as the loss registry names it (``sampled_ce_256_uniform``); its logits are
    (N, K + 1) whatever V, and so is its arithmetic floor."""
    loss_fn = functools.partial(sampled_ce, n_negatives=n_negatives, sampler="uniform")
    provider = Provider(setup_sampled_ce(n_negatives), torch.bfloat16,
                        cuda_only=loss_facts(loss_fn).cuda_only, logit_columns=n_negatives + 1,
                        description=f"sampled softmax, {n_negatives:,} uniform negatives")
    return loss_name(loss_fn), provider


def setup_liger(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> Setup:
    """Liger-Kernel's chunked fused linear cross-entropy.

    ``accum_dtype=float32`` accumulates the catalog gradient in fp32 across chunks, as CCE
    does; Liger's default accumulates it in bf16.
    """
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    e_, c_ = _leaves(e, c, torch.bfloat16)
    loss = LigerFusedLinearCrossEntropyLoss(
        ignore_index=IGNORE_INDEX, reduction="mean", accum_dtype=torch.float32
    )
    # The weight comes FIRST: forward(lin_weight, _input, target).
    return Setup(lambda: loss(c_, e_, targets), (e_, c_))


# Registered losses are named by ``loss_name`` (what metrics.json and bench_epoch call them).
PROVIDERS: dict[str, Provider] = dict([
    _of_loss(ce, torch.float32, suffix="_fp32", description="CE, fp32"),
    _of_loss(ce, torch.bfloat16, suffix="_bf16", description="CE, bf16 logits, fp32 softmax"),
    # cuda_only=False: off CUDA it runs cut-cross-entropy's reference path, measured there too
    _of_loss(cce, torch.bfloat16, cuda_only=False, description="CCE, default filter"),
    _of_loss(functools.partial(cce, forward="library"), torch.bfloat16,
             description="CCE, default filter, the library's forward"),
    _of_loss(functools.partial(cce, filter_eps=None), torch.bfloat16, description="CCE, filter_eps=None"),
    ("cce_torch_compile", Provider(setup_cce_torch_compile, torch.bfloat16,
                                   description="cut-cross-entropy torch_compile impl")),
    _of_loss(flash_ce, torch.bfloat16, description="own Triton kernel, exact gradients"),
    _of_loss(flex_ce, torch.bfloat16, description="FlexAttention LSE as the loss"),
    *(_sampled_provider(k) for k in (256, 3000)),
    ("liger", Provider(setup_liger, torch.bfloat16, cuda_only=True, module="liger_kernel",
                       description="Liger fused linear CE")),
])


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why provider ``name`` cannot run on ``device``, or None when it can."""
    spec = PROVIDERS[name]
    if spec.cuda_only and device.type != "cuda":
        return "needs a CUDA GPU"
    if spec.module is not None and importlib.util.find_spec(spec.module) is None:
        return f"{spec.module} is not installed"
    return None


def mode_callable(setup: Setup, mode: str) -> Callable[[], object]:
    """The callable timed for ``mode`` (see the module docstring); ``bw`` runs a forward now."""
    if mode == "fw":
        return setup.forward
    if mode == "fw-bw":

        def step() -> None:
            setup.forward().backward()

        return step
    if mode == "bw":
        loss = setup.forward()

        def backward() -> None:
            loss.backward(retain_graph=True)

        return backward
    raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")


# (loss, gradients) tolerances per operand dtype, as errors relative to the float64 reference:
# bf16 rounding alone costs about 4e-3 on the gradients at V = 1000, CCE's filter up to 9e-3
# more on trained-like inputs; a broken provider (swapped operands, wrong reduction) is off by O(1).
TOLERANCES = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (5e-3, 3e-2)}


@dataclass(frozen=True)
class Check:
    """One provider against the float64 reference; errors are relative (see ``check_provider``)."""

    provider: str
    loss_err: float
    grad_e_err: float
    grad_c_err: float
    tol_loss: float
    tol_grad: float
    passed: bool
    error: str = ""


def check_provider(
    name: str, e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, *, provider=None
) -> Check:
    """Compares a provider's loss and both gradients with a float64 reference.

    The reference sees the provider's own (rounded) operands, so the tolerance covers the
    computation only. Loss error: |loss - ref| / max(1, |ref|); gradient errors: relative
    Frobenius norm. ``provider`` overrides the registry entry (tests pass broken ones).
    """
    spec = provider if provider is not None else PROVIDERS[name]
    tol_loss, tol_grad = TOLERANCES[spec.dtype]
    try:
        setup = spec.setup(e, c, targets)
        loss = setup.forward()
        loss.backward()
        e_, c_ = setup.leaves
        e64 = e_.detach().double().requires_grad_()
        c64 = c_.detach().double().requires_grad_()
        if setup.reference is not None:
            ref = setup.reference(e64, c64)
        else:
            ref = torch.nn.functional.cross_entropy(e64 @ c64.T, targets, ignore_index=IGNORE_INDEX)
        ref.backward()
        loss, ref_value = float(loss.detach()), float(ref.detach())
        loss_err = abs(loss - ref_value) / max(1.0, abs(ref_value))
        errs = [
            float((g.double() - g64).norm() / g64.norm()) if g is not None else float("inf")
            for g, g64 in ((e_.grad, e64.grad), (c_.grad, c64.grad))
        ]
    except Exception as exc:  # a provider that crashes fails the check, with its message
        nan = float("nan")
        return Check(name, nan, nan, nan, tol_loss, tol_grad, False, f"{type(exc).__name__}: {exc}")
    passed = loss_err <= tol_loss and errs[0] <= tol_grad and errs[1] <= tol_grad
    return Check(name, loss_err, errs[0], errs[1], tol_loss, tol_grad, passed)
