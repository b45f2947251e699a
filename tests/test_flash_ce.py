"""flash_ce (core/losses/flash_ce.py) on the CPU: its Triton kernels under the Triton interpreter.

The interpreter (TRITON_INTERPRET=1, set before Triton decorates the kernels, hence one
subprocess for the module) runs the same programs with numpy, so tiling, masks, the split merge
of the forward LSE and of the dE partials, the one-hot subtraction and ignored rows are all
checked against a float64 oracle without a GPU. The interpreter mishandles bfloat16 (garbage
values), so operands here are float32 and float16; bfloat16 is checked on the GPU in
tests/test_losses_agreement.py.

The checks must be able to fail: the same subprocess runs deliberately broken copies of the
kernels module (one source line changed each, see MUTANTS) and each must miss the tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.child_env import child_env
import torch

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "core" / "losses" / "kernels" / "flash_ce.py"

# (N, V, D, dtype): few and many rows (both tile-table rows), D = 16..256 incl. non-powers of
# two, V never a tile multiple, many catalog slices (N = 130, V = 1,000), row slices in dC
# (N = 300, V = 40), one row. The broken kernels run on the first four.
CASES = [
    (5, 129, 24, "float32"),
    (37, 300, 64, "float32"),
    (130, 1000, 32, "float16"),
    (300, 40, 16, "float32"),
    (20, 70, 128, "float32"),
    (9, 150, 256, "float16"),
    (1, 33, 7, "float32"),
    (2100, 70, 32, "float32"),
]
# float32: the agreement suite's bound. float16: P is rounded to fp16 (2**-11 relative) before
# the gradient matmuls, logits are fp32-accumulated: a few 1e-4 measured, 2e-3 bound.
TOL = {"float32": 1e-5, "float16": 2e-3}

# Deliberately broken kernels: (name, exact source text, replacement). Each must be caught.
# The forward's LSE kernel is shared with cce: its broken copies are in tests/test_split_lse.py.
MUTANTS = [
    ("de_no_onehot",  # dE forgets the target's -1
     "p = tl.exp2(logits * LOG2E - lse[:, None]) - tl.where(tgt[:, None] == offs_v[None, :], 1.0, 0.0)",
     "p = tl.exp2(logits * LOG2E - lse[:, None])"),
    ("dc_no_onehot",  # dC forgets the target's -1
     "p = tl.exp2(logits * LOG2E - lse[None, :]) - tl.where(offs_v[:, None] == tgt[None, :], 1.0, 0.0)",
     "p = tl.exp2(logits * LOG2E - lse[None, :])"),
    ("dc_unweighted",  # dC ignores the row weights (ignored rows and the 1/count mean)
     "p = p * w[None, :]", "p = p"),
    ("de_last_tile_skipped",  # each dE slice stops one tile early
     "for t in range(tiles_per_split):\n        offs_v = (pid_s * tiles_per_split + t) * BLOCK_V"
     " + tl.arange(0, BLOCK_V)\n        c = tl.load(",
     "for t in range(tiles_per_split - 1):\n        offs_v = (pid_s * tiles_per_split + t) * BLOCK_V"
     " + tl.arange(0, BLOCK_V)\n        c = tl.load("),
    ("dc_row_slice_overlap",  # dC row slices each run one block into the next slice
     "row_end = tl.minimum(N, (pid_s + 1) * rows_per_split)",
     "row_end = tl.minimum(N, (pid_s + 1) * rows_per_split + BLOCK_N)"),
]

CHECK = r"""
import importlib.util, json, sys, tempfile
import torch
import torch.nn.functional as F
import core.losses.kernels
from core.losses import flash_ce, IGNORE_INDEX
from core.losses.flash_ce import flash_linear_ce

cases, mutants, kernels_path = json.loads(sys.argv[1])

def errors(n, v, d, dtype, seed=0, ignore=0.2):
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    e = torch.randn(n, d, generator=g).to(dt).requires_grad_()
    c = torch.randn(v, d, generator=g).to(dt).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    t[torch.rand(n, generator=g) < ignore] = IGNORE_INDEX
    t[0] = v - 1  # a target in the last (ragged) tile
    loss = flash_linear_ce(e, c, t)
    loss.backward()
    e64 = e.detach().double().requires_grad_()
    c64 = c.detach().double().requires_grad_()
    ref = F.cross_entropy(e64 @ c64.T, t, ignore_index=IGNORE_INDEX)
    ref.backward()
    rel = lambda a, b: (torch.linalg.norm(a.double() - b) / torch.linalg.norm(b)).item()
    ignored = t == IGNORE_INDEX
    return {"loss": abs(loss.item() - ref.item()), "de": rel(e.grad, e64.grad),
            "dc": rel(c.grad, c64.grad), "ignored_rows": int(ignored.sum()),
            "ignored_grad": e.grad[ignored].abs().max().item() if ignored.any() else 0.0}

out = {"cases": [errors(*case) for case in cases]}

# Edge cases, compared with plain ce (the registered loss runs the kernels here).
edge = {}
for name, n, all_ignored in (("empty", 0, False), ("all_ignored", 4, True)):
    e = torch.randn(n, 16, requires_grad=True)
    c = torch.randn(50, 16, requires_grad=True)
    t = torch.full((n,), IGNORE_INDEX)
    loss = flash_ce(e, c, t)
    loss.backward()
    edge[name] = [str(loss.item()), e.grad.abs().sum().item(), c.grad.abs().sum().item(),
                  list(e.grad.shape), list(c.grad.shape)]
# Reruns are bit-identical (no atomics anywhere).
e = torch.randn(130, 32).requires_grad_()
c = torch.randn(1000, 32).requires_grad_()
t = torch.randint(0, 1000, (130,))
grads = []
for _ in range(2):
    e.grad = c.grad = None
    flash_ce(e, c, t).backward()
    grads.append((e.grad.clone(), c.grad.clone()))
edge["deterministic"] = all(torch.equal(a, b) for a, b in zip(*grads))
out["edge"] = edge

# Broken copies of the kernels module, swapped in where the launchers import it from.
source = open(kernels_path).read()
out["mutants"] = {}
for name, old, new in mutants:
    if source.count(old) != 1:
        out["mutants"][name] = "source text not found exactly once"
        continue
    path = tempfile.mkdtemp() + "/mutant_" + name + ".py"
    open(path, "w").write(source.replace(old, new))
    spec = importlib.util.spec_from_file_location("mutant_" + name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    core.losses.kernels.flash_ce = mod
    sys.modules["core.losses.kernels.flash_ce"] = mod
    out["mutants"][name] = [errors(*case) for case in cases[:4]]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = child_env(TRITON_INTERPRET="1")
    arg = json.dumps([CASES, MUTANTS, str(KERNELS)])
    proc = subprocess.run([sys.executable, "-c", CHECK, arg], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _failures(case, err) -> list[str]:
    tol = TOL[case[3]]
    return [f"{what} {err[what]:.3g} > {tol:g}" for what in ("loss", "de", "dc") if not err[what] <= tol]


@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda i: "N%d-V%d-D%d-%s" % CASES[i])
def test_loss_and_gradients_match_float64(interpreted, index):
    err = interpreted["cases"][index]
    assert not _failures(CASES[index], err), f"{CASES[index]}: {_failures(CASES[index], err)}"
    assert err["ignored_grad"] == 0.0, "an ignored target's row got a gradient"


def test_cases_include_ignored_rows(interpreted):
    assert sum(err["ignored_rows"] for err in interpreted["cases"]) > 10


def test_no_rows_and_all_ignored_match_ce(interpreted):
    """ce's behaviour: NaN loss (mean over no targets), zero gradients of the right shapes."""
    for name, n in (("empty", 0), ("all_ignored", 4)):
        loss, de_sum, dc_sum, de_shape, dc_shape = interpreted["edge"][name]
        assert loss == "nan" and de_sum == 0.0 and dc_sum == 0.0, (name, loss, de_sum, dc_sum)
        assert de_shape == [n, 16] and dc_shape == [50, 16]


def test_reruns_are_bit_identical(interpreted):
    assert interpreted["edge"]["deterministic"]


@pytest.mark.parametrize("name", [m[0] for m in MUTANTS])
def test_broken_kernels_are_caught(interpreted, name):
    result = interpreted["mutants"][name]
    assert isinstance(result, list), f"{name}: {result}"  # the mutation applied
    caught = [_failures(case, err) for case, err in zip(CASES, result)]
    assert any(caught), f"mutant {name} passed every check: {result}"


# --------------------------------------------------------------------------------------------
# Without the interpreter: the CPU fallback, argument checks, naming, lazy triton.


def test_cpu_fallback_is_plain_ce():
    from core.losses import ce, flash_ce, flex_ce

    g = torch.Generator().manual_seed(1)
    e, c = torch.randn(6, 8, generator=g), torch.randn(11, 8, generator=g)
    t = torch.tensor([1, 2, -100, 10, 0, 3])
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 runs the kernels on the CPU")
    for fn in (flash_ce, flex_ce):
        assert torch.equal(fn(e, c, t), ce(e, c, t))


@pytest.mark.parametrize("shapes", [((4, 300), (9, 300), (4,)), ((4, 8), (9, 7), (4,)),
                                    ((4, 8), (9, 8), (5,)), ((4, 8), (0, 8), (4,))],
                         ids=["D>256", "D-mismatch", "targets", "V=0"])
def test_bad_shapes_are_refused(shapes):
    from core.losses.flash_ce import flash_linear_ce

    e, c, t = torch.zeros(shapes[0]), torch.zeros(shapes[1]), torch.zeros(shapes[2], dtype=torch.int64)
    with pytest.raises(ValueError, match="flash_ce"):
        flash_linear_ce(e, c, t)


@pytest.mark.parametrize("name", ["flash_ce", "flex_ce"])
def test_gin_file_trains_and_names_the_loss(name, tmp_path):
    """One short CPU epoch with the loss's gin file (the CPU fallback runs): its name is recorded."""
    from experiments import run

    out = tmp_path / "run"
    bindings = [f"dataset.cache_dir = '{tmp_path / 'cache'}'",
                "dataset.synthetic_overrides = {'n_users': 150}", "train.batch_size = 64",
                "train.device = 'cpu'", "train.show_progress = False", "train.epochs = 1"]
    argv = ["--gin", "gin/quickstart.gin", "--gin", f"gin/loss/{name}.gin", "--out", str(out)]
    assert run.main(argv + [a for b in bindings for a in ("--gin_bindings", b)]) == 0
    assert json.loads((out / "metrics.json").read_text())["loss"] == name


def test_importing_the_losses_imports_no_triton():
    code = "import sys, core.losses; assert 'triton' not in sys.modules, 'triton imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_flex_row_buckets_pad_at_most_an_eighth():
    from core.losses.flex import row_bucket

    sizes = [row_bucket(n) for n in range(1, 20_000)]
    # Multiples of 16 at least (15 rows of padding below 256 rows), else at most 12.5%.
    assert all(n <= b <= max(n + 15, n * 1.125) for n, b in zip(range(1, 20_000), sizes))
    assert len(set(sizes[8192:16383])) == 8  # one octave, 8 compiled shapes
    assert row_bucket(560) == 576 and row_bucket(12_800) == 13_312


@pytest.mark.parametrize("argv", [["--dims", "48"], ["--dims", "64,x"], ["--dims", ""]])
def test_tune_script_refuses_bad_dims(argv, tmp_path, capsys):
    from kernels_bench import tune_flash_ce

    assert tune_flash_ce.main(["--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --dims")
    assert not (tmp_path / "out").exists()
