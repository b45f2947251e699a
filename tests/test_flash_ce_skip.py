"""flash_ce's ``SKIP_IGNORED_BLOCKS`` (core/losses/flash_ce.py): row blocks with no scored row do
no catalog work. Off by default until measured on a GPU (issue 21).

The oracle is the switch-off path itself, held to float64 by tests/test_flash_ce.py: with the
switch on, the loss, dE and dC must equal it bit for bit (scored rows' arithmetic is unchanged;
a skipped block only stops adding exact zeros), on patterns of ignored rows that leave whole
blocks without a target (a tail, interior blocks, a few scored rows, none ignored, all ignored).
One case is also compared with float64 softmax CE directly. Broken variants of the kernels must
fail: a skip test inverted, dC's missing guard (an ignored row's -inf LSE turns inf * 0 into
NaN), dE reading ignored rows (a skipped forward block's softmax C is NaN), the last scored
row's end off by one, the end's reduction. dE is also handed an -inf LSE on an ignored row of a
scored block (what a skipped block leaves), which must not change it.

Runs under the Triton interpreter in a child process (TRITON_INTERPRET=1 must be set before
Triton decorates the kernels); the GPU case compiles the kernels for CUDA.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.child_env import INTERPRETED_TIMEOUT_S, child_env

REPO = Path(__file__).resolve().parents[1]
KERNELS = {"flash_ce": REPO / "core" / "losses" / "kernels" / "flash_ce.py"}

# (module, name, exact source text, replacement): each must be caught.
MUTANTS = [
    ("flash_ce", "fwd_skip_inverted",  # live blocks skipped, dead ones computed
     "n_tiles = tl.where(tl.max((tgt != IGNORE).to(tl.int32), axis=0) > 0, tiles_per_split, 0)",
     "n_tiles = tl.where(tl.max((tgt != IGNORE).to(tl.int32), axis=0) > 0, 0, tiles_per_split)"),
    ("flash_ce", "dc_no_guard",  # a skipped block's -inf LSE: exp2(+inf) in dC
     "shift = tl.where(tgt != IGNORE, lse * LOG2E - W_LOG2, float(\"inf\"))", "shift = lse * LOG2E - W_LOG2"),
    ("flash_ce", "de_reads_ignored_rows",  # dE merges every row's slices: a skipped block's NaN
     "sr_mask = (s < n_splits)[:, None] & scored[None, :]", "sr_mask = (s < n_splits)[:, None] & r_mask[None, :]"),
    ("flash_ce", "live_end_one_short",  # dC stops before the last scored row
     "tl.where(valid, offs_r + 1, 0)", "tl.where(valid, offs_r, 0)"),
    ("flash_ce", "live_end_not_max",  # the loss kernel keeps the smallest block end
     "live = tl.maximum(live, tl.load(", "live = tl.minimum(live, tl.load("),
]

CHECK = r"""
import json, sys
import torch
import torch.nn.functional as F
import core.losses.kernels
from core.losses import IGNORE_INDEX
from core.losses.flash_ce import flash_linear_ce, forward_stats, grad_e, _plan
from tests.mutants import load_mutant

fce = sys.modules["core.losses.flash_ce"]
mutants, paths, device = json.loads(sys.argv[1])

# name: (N, V, D, ignored row ranges); forward blocks are 128 rows, dC's 64 (D = 32)
PATTERNS = {
    "tail": (400, 257, 32, [(150, 400)]),
    "interior": (400, 257, 32, [(128, 256), (300, 400)]),
    "few_scored": (300, 100, 32, [(0, 5), (6, 190), (191, 299)]),
    "none_ignored": (70, 129, 32, []),
    "all_ignored": (260, 50, 32, [(0, 260)]),
}

def operands(n, v, d, ignored, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=g).to(device)
    c = torch.randn(v, d, generator=g).to(device)
    t = torch.randint(0, v, (n,), generator=g).to(device)
    for lo, hi in ignored:
        t[lo:hi] = IGNORE_INDEX
    return e, c, t

def run(e, c, t, skip):
    fce.SKIP_IGNORED_BLOCKS = skip
    e, c = e.clone().requires_grad_(), c.clone().requires_grad_()
    loss = flash_linear_ce(e, c, t)
    loss.backward()
    return loss.detach(), e.grad, c.grad

def same(a, b):
    return bool(torch.equal(a, b) or (a.isnan().all() and b.isnan().all()))

def check():
    res = {}
    for name, (n, v, d, ignored) in PATTERNS.items():
        e, c, t = operands(n, v, d, ignored)
        off, on = run(e, c, t, False), run(e, c, t, True)
        ign = t == IGNORE_INDEX
        res[name] = {"identical": all(same(a, b) for a, b in zip(off, on)),
                     "finite_grads": bool(torch.isfinite(on[1]).all() and torch.isfinite(on[2]).all()),
                     "ignored_grad": on[1][ign].abs().max().item() if ign.any() else 0.0}
    # float64 oracle, directly
    e, c, t = operands(*PATTERNS["interior"])
    loss, de, dc = run(e, c, t, True)
    e64, c64 = e.double().requires_grad_(), c.double().requires_grad_()
    ref = F.cross_entropy(e64 @ c64.T, t, ignore_index=IGNORE_INDEX)
    ref.backward()
    rel = lambda a, b: (torch.linalg.norm(a.double() - b) / torch.linalg.norm(b)).item()
    res["float64"] = [abs(loss.item() - ref.item()), rel(de, e64.grad), rel(dc, c64.grad)]
    # dE never reads an ignored row's LSE: -inf there (what a skipped forward block leaves)
    fce.SKIP_IGNORED_BLOCKS = True
    e, c, t = operands(200, 129, 32, [(3, 4), (150, 200)])
    plan = _plan(e, c)
    loss, stats, part = forward_stats(e, c, t, plan)
    want = grad_e(e, c, stats, part, t, torch.ones((), device=device), plan)
    stats[3] = float("-inf")
    got = grad_e(e, c, stats, part, t, torch.ones((), device=device), plan)
    res["de_guard"] = bool(torch.isfinite(got).all()) and bool(torch.equal(got, want))
    return res

out = {"real": check(), "mutants": {}}
real_modules = {k: sys.modules["core.losses.kernels." + k] for k in paths}
for module, name, old, new in mutants:
    mod = load_mutant(paths[module], old, new, name)
    if mod is None:
        out["mutants"][name] = "source text not found exactly once"
        continue
    setattr(core.losses.kernels, module, mod)
    sys.modules["core.losses.kernels." + module] = mod
    fce._PLANS.clear()
    try:
        out["mutants"][name] = check()
    except Exception as err:  # a crash is a catch too
        out["mutants"][name] = {"raised": str(err).splitlines()[0][:300]}
    setattr(core.losses.kernels, module, real_modules[module])
    sys.modules["core.losses.kernels." + module] = real_modules[module]
    fce._PLANS.clear()
print(json.dumps(out))
"""


def _run(device: str, interpret: bool) -> dict:
    env = child_env(**({"TRITON_INTERPRET": "1"} if interpret else {}))
    arg = json.dumps([MUTANTS, {k: str(v) for k, v in KERNELS.items()}, device])
    proc = subprocess.run([sys.executable, "-c", CHECK, arg], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=INTERPRETED_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ok(res: dict) -> list[str]:
    """What is wrong with one run of the checks (empty: all held)."""
    if "raised" in res:
        return [res["raised"]]
    bad = [f"{name}: {r}" for name, r in res.items() if name not in ("float64", "de_guard")
           and not (r["identical"] and r["finite_grads"] and r["ignored_grad"] == 0.0)]
    if not all(err < 1e-5 for err in res["float64"]):
        bad.append(f"float64: {res['float64']}")
    if not res["de_guard"]:
        bad.append("dE read an ignored row's LSE")
    return bad


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return _run("cpu", interpret=True)


def test_skipping_equals_the_full_kernels_bit_for_bit(interpreted):
    assert _ok(interpreted["real"]) == []


@pytest.mark.parametrize("name", [m[1] for m in MUTANTS])
def test_every_broken_variant_is_caught(interpreted, name):
    res = interpreted["mutants"][name]
    assert res != "source text not found exactly once", name
    assert _ok(res), f"mutant {name} went unnoticed"


def test_the_switch_is_on_only_where_the_caller_expects_filler_unless_forced(monkeypatch):
    """Default (None): on inside ``filler_rows()`` (the graphed step's packed buckets, where it
    was measured faster), off elsewhere (mostly scored rows, where it was slower); True / False
    force it."""
    from core.losses import flash_ce as _  # noqa: F401  (imports the module)
    from core.losses.registry import filler_rows

    module = sys.modules["core.losses.flash_ce"]
    monkeypatch.setattr(module, "SKIP_IGNORED_BLOCKS", None)
    e, c = torch.zeros(100, 8), torch.zeros(5, 8)
    module._PLANS.clear()
    assert module._plan(e, c).fwd_meta["SKIP_IGNORED"] is False
    with filler_rows():
        assert module._plan(e, c).fwd_meta["SKIP_IGNORED"] is True
        with filler_rows(False):
            assert not module.skips_ignored()
    assert not module.skips_ignored()
    for forced in (True, False):
        monkeypatch.setattr(module, "SKIP_IGNORED_BLOCKS", forced)
        assert module.skips_ignored() is forced
        with filler_rows(not forced):
            assert module.skips_ignored() is forced


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_skipping_equals_the_full_kernels_and_mutants_are_caught():
    res = _run("cuda", interpret=False)
    assert _ok(res["real"]) == []
    missed = [name for name, r in res["mutants"].items() if not _ok(r) or r == "source text not found exactly once"]
    assert missed == []
