"""core.losses.kernels.cce_split on the CPU, under the Triton interpreter (TRITON_INTERPRET=1).

The interpreter runs the same Triton programs with numpy, so the split forward's tiling, the
online log-sum-exp merge, the per-item mean logit and the whole autograd function (with the
library's backward kernel) are checked here without a GPU. Interpreter mode must be set before
Triton decorates the kernels, hence a subprocess. The interpreter mishandles bfloat16 loads,
so this uses float32 (forward) and float16 (forward and backward); bfloat16 is checked on the
GPU in tests/test_losses_agreement.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.child_env import child_env

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, torch
import torch.nn.functional as F
from core.losses.kernels.cce_split import split_cce, split_lse

out = {"lse": [], "grad": []}
g = torch.Generator().manual_seed(0)
# (N, V, D): one slice and many; D below, at and above one 64-wide chunk; V not a tile multiple.
for n, v, d in [(5, 129, 24), (37, 1000, 64), (130, 3001, 100), (70, 200, 16)]:
    e, c = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g)
    for dtype in (torch.float32, torch.float16):
        e_, c_ = e.to(dtype), c.to(dtype)
        rows = torch.rand(n, generator=g) < 0.7
        rows[0] = True
        lse, avg = split_lse(e_, c_, logit_avg=True, rows=rows)
        logits = e_.double() @ c_.double().T
        out["lse"].append([n, v, d, str(dtype),
                           (lse.double() - torch.logsumexp(logits, 1)).abs().max().item(),
                           (avg.double() - logits[rows].mean(0)).abs().max().item()])
for eps in (None, 2.0**-10 / 32):
    e = torch.randn(40, 32, generator=g).half().requires_grad_()
    c = torch.randn(300, 32, generator=g).requires_grad_()  # fp32 catalog, cast per tile
    t = torch.randint(0, 300, (40,), generator=g)
    t[3] = -100
    loss = split_cce(e, c, t, filter_eps=eps)
    loss.backward()
    e64 = e.detach().double().requires_grad_()
    c64 = c.detach().half().double().requires_grad_()
    ref = F.cross_entropy(e64 @ c64.T, t, ignore_index=-100)
    ref.backward()
    rel = lambda a, b: (torch.linalg.norm(a.double() - b) / torch.linalg.norm(b)).item()
    out["grad"].append([eps, abs(loss.item() - ref.item()), rel(e.grad, e64.grad),
                        rel(c.grad, c64.grad), e.grad[3].abs().max().item()])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = child_env(TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_split_lse_matches_float64(interpreted):
    for n, v, d, dtype, lse_err, avg_err in interpreted["lse"]:
        # fp32 logits of D <= 100 unit-variance products (|logit| <~ 40): ~1e-5 absolute.
        assert lse_err < 5e-5, f"lse N={n} V={v} D={d} {dtype}: {lse_err:.3g}"
        assert avg_err < 5e-5, f"mean logit over the selected rows N={n} V={v} D={d} {dtype}: {avg_err:.3g}"


def test_split_cce_loss_and_gradients_match_float64(interpreted):
    for eps, loss_err, de_err, dc_err, ignored_row_grad in interpreted["grad"]:
        assert loss_err < 1e-4, f"loss (filter {eps}): {loss_err:.3g}"
        # float16 operands of the backward matmuls: ~2**-11 relative per element.
        assert de_err < 2e-3 and dc_err < 2e-3, f"filter {eps}: dE {de_err:.3g}, dC {dc_err:.3g}"
        assert ignored_row_grad == 0.0, "an ignored target's row got a gradient"


def test_split_cce_refuses_fp32_hidden_states():
    import torch

    from core.losses.kernels.cce_split import split_cce

    with pytest.raises(ValueError, match="bf16 or fp16"):
        split_cce(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2, dtype=torch.int64), filter_eps=None)
