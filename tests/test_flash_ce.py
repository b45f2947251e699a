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

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.child_env import INTERPRETED_TIMEOUT_S, child_env

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "core" / "losses" / "kernels" / "flash_ce.py"

# (N, V, D, dtype): few and many rows (both tile-table rows), D = 16..256 incl. non-powers of
# two, V never a tile multiple, many catalog slices (N = 130, V = 1,000), row slices in dC
# (N = 300, V = 40), one row, the small-catalog backward tiles; a fifth entry is a stand-in SM count (more slices than one chunk of
# the finish and dE merge kernels). The broken kernels run on the first four and the last.
CASES = [
    (5, 129, 24, "float32"),
    (37, 300, 64, "float32"),
    (130, 1000, 32, "float16"),
    (300, 40, 16, "float32"),
    (20, 70, 128, "float32"),
    (9, 150, 256, "float16"),
    (1, 33, 7, "float32"),
    (2100, 70, 32, "float32"),
    (2100, 70, 64, "float32"),  # many rows, small catalog, D = 64: _SMALL_CATALOG_TILES' dC tile
    (37, 4500, 16, "float32", 64),  # 64 stand-in SMs: 36 slices, merged in 2 finish / 3 dE chunks
]
# float32: the agreement suite's bound. float16: P is rounded to fp16 (2**-11 relative) before
# the gradient matmuls, logits are fp32-accumulated: a few 1e-4 measured, 2e-3 bound.
TOL = {"float32": 1e-5, "float16": 2e-3}

# Deliberately broken kernels: (name, exact source text, replacement). Each must be caught.
# The forward's LSE kernel is shared with cce: its broken copies are in tests/test_split_lse.py.
MUTANTS = [
    ("de_no_target",  # dE forgets the target's row (the onehot's -1)
     "de = (acc - c) * scale", "de = acc * scale"),
    ("dc_no_onehot",  # dC forgets the target's -1
     "p = tl.exp2(logits * LOG2E - shift[None, :]) - tl.where(offs_v[:, None] == tgt[None, :], W_SCORED, 0.0)",
     "p = tl.exp2(logits * LOG2E - shift[None, :])"),
    ("dc_onehot_a_tile_off",  # dC's one-hot compared against the next tile's items
     "tl.where(offs_v[:, None] == tgt[None, :], W_SCORED, 0.0)", "tl.where(offs_v[:, None] + BLOCK_V == tgt[None, :], W_SCORED, 0.0)"),
    ("dc_ignored_rows_weighted",  # dC weighs ignored rows as scored ones
     "shift = tl.where(tgt != IGNORE, lse * LOG2E - W_LOG2, float(\"inf\"))", "shift = lse * LOG2E - W_LOG2"),
    ("dc_scale_not_over_count",  # dC's scale forgets the count of scored rows
     "scale = tl.load(Grad).to(tl.float32) / (tl.maximum(tl.load(Stats + N), 1.0) * W_SCORED)",
     "scale = tl.load(Grad).to(tl.float32) / W_SCORED"),
    ("fwd_last_tile_skipped",  # each forward slice stops one tile early (LSE and softmax C)
     "for t in range(n_tiles):\n        offs_v = (pid_s * tiles_per_split + t) * BLOCK_V + tl.arange(0, BLOCK_V)\n"
     "        v_mask = offs_v < V\n        c = tl.load(",
     "for t in range(n_tiles - 1):\n        offs_v = (pid_s * tiles_per_split + t) * BLOCK_V + tl.arange(0, BLOCK_V)\n"
     "        v_mask = offs_v < V\n        c = tl.load("),
    ("fwd_last_tile_unmasked",  # the catalog's last, partial tile not masked: items past V count
     "if (pid_s * tiles_per_split + t + 1) * BLOCK_V > V:", "if (pid_s * tiles_per_split + t + 1) * BLOCK_V > V + BLOCK_V:"),
    ("fwd_mask_a_tile_late",  # the mask tested on the tile's start: a partial tile not masked
     "if (pid_s * tiles_per_split + t + 1) * BLOCK_V > V:", "if (pid_s * tiles_per_split + t) * BLOCK_V > V:"),
    ("fwd_no_rescale",  # softmax C not rescaled when a slice's running max grows
     "acc = tl.dot(p.to(e.dtype), c, acc * alpha[:, None], input_precision=PRECISION)",
     "acc = tl.dot(p.to(e.dtype), c, acc, input_precision=PRECISION)"),
    ("dc_row_slice_overlap",  # dC row slices each run one block into the next slice
     "row_end = tl.minimum(N, (pid_s + 1) * rows_per_split)",
     "row_end = tl.minimum(N, (pid_s + 1) * rows_per_split + BLOCK_N)"),
    ("finish_no_valid_mask",  # the loss sums ignored rows too
     "row_loss = tl.where(valid, lse - dot, 0.0)", "row_loss = tl.where(r_mask, lse - dot, 0.0)"),
    ("count_all_rows",  # the count (loss mean and gradient scale) includes ignored rows
     "tl.sum(valid.to(tl.float32), axis=0)", "tl.sum(r_mask.to(tl.float32), axis=0)"),
    ("finish_merge_no_rescale",  # the slices' LSE merge forgets to rescale its running sum
     "run_sum = run_sum * tl.exp(run_max - safe_max) + tl.sum(tl.exp(part - safe_max[None, :]), axis=0)",
     "run_sum = run_sum + tl.sum(tl.exp(part - safe_max[None, :]), axis=0)"),
    ("de_partials_not_summed",  # dE takes the first catalog slice's softmax C only
     "sr_mask = (s < n_splits)[:, None] & scored[None, :]", "sr_mask = (s < 1)[:, None] & scored[None, :]"),
    ("de_merge_unweighted",  # dE sums the slices' softmax C without their LSE weights
     "w = tl.exp(part - lse[None, :])", "w = tl.where(part > float(\"-inf\"), 1.0, 0.0)"),
    ("de_scale_not_over_count",  # dE's scale forgets the count of scored rows
     "scale = tl.load(Grad).to(tl.float32) / tl.maximum(tl.load(Stats + N), 1.0)\n    de =",
     "scale = tl.load(Grad).to(tl.float32) / 1.0\n    de ="),
    ("de_ignored_rows_weighted",  # dE weighs ignored rows as scored ones
     "scored = r_mask & (tgt != IGNORE)", "scored = r_mask"),
]
# Broken copies of the launchers (core/losses/flash_ce.py), caught by the reuse checks.
LAUNCHER = REPO / "core" / "losses" / "flash_ce.py"
LAUNCHER_MUTANTS = [
    ("stats_in_workspace",  # the LSEs saved for the backward in a reused buffer: a second loss
     # built before the first one's backward overwrites them
     "stats = torch.empty(n + 2, dtype=torch.float32, device=e.device)",
     "stats = _workspace(e.device, \"stats\", n + 2)"),
    ("plan_without_catalog_size",  # a shape's launch plan looked up without V
     "key = (e.device, e.dtype, e.shape[0], c.shape[0], e.shape[1])",
     "key = (e.device, e.dtype, e.shape[0], e.shape[1])"),
]

CHECK = r"""
import json, sys
import torch
import torch.nn.functional as F
import core.losses.kernels
from core.losses import flash_ce, IGNORE_INDEX
from core.losses.flash_ce import flash_linear_ce
from tests.mutants import load_mutant, load_source

fce = sys.modules["core.losses.flash_ce"]  # the module (core.losses.flash_ce is the function)
import core.losses.split_lse as split_lse_module

cases, mutants, kernels_path, launcher_mutants, launcher_path = json.loads(sys.argv[1])
real_sm_count = split_lse_module.sm_count

def operands(n, v, d, dtype, seed=0, ignore=0.2):
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    e = torch.randn(n, d, generator=g).to(dt).requires_grad_()
    c = torch.randn(v, d, generator=g).to(dt).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    t[torch.rand(n, generator=g) < ignore] = IGNORE_INDEX
    t[0] = v - 1  # a target in the last (ragged) tile
    return e, c, t

def errors(n, v, d, dtype, sms=None, seed=0, ignore=0.2, linear_ce=None):
    split_lse_module.sm_count = (lambda device: sms) if sms else real_sm_count
    fce._PLANS.clear()  # plans hold the slice counts
    e, c, t = operands(n, v, d, dtype, seed, ignore)
    loss = (linear_ce or flash_linear_ce)(e, c, t)
    loss.backward()
    return compare(e, c, t, loss)

def compare(e, c, t, loss):
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
# A multi-block case with every row ignored, and one whose first finish block is all ignored.
e = torch.randn(130, 32, requires_grad=True)
c = torch.randn(50, 32, requires_grad=True)
loss = flash_ce(e, c, torch.full((130,), IGNORE_INDEX))
loss.backward()
edge["all_ignored_130"] = [str(loss.item()), e.grad.abs().sum().item(), c.grad.abs().sum().item()]
e, c, t = operands(130, 1000, 32, "float32", seed=3)
t[:64] = IGNORE_INDEX
loss = flash_linear_ce(e, c, t)
loss.backward()
edge["block_ignored"] = compare(e, c, t, loss)
# An fp32 catalog with fp16 hidden states: tiles cast in the kernels, dC in fp32; the oracle
# takes the catalog as the kernels see it (fp16 values held in fp32).
e, c, t = operands(37, 300, 64, "float16", seed=5)
c32 = c.detach().float().requires_grad_()
loss = flash_linear_ce(e, c32, t)
loss.backward()
edge["fp32_catalog"] = compare(e, c32, t, loss) | {"dc_dtype": str(c32.grad.dtype)}
# The tied item table (core.model.TiedItemTable) takes flash_ce's dC buffer as the table's
# gradient: same table gradient as the untied model (catalog() then autograd's sum), padding row zero.
from core.model import SASRec, table_backed
torch.manual_seed(0)
model = SASRec(60, dim=16, max_len=8, n_blocks=1, dropout=0.0)
seq = torch.randint(1, 61, (4, 8))
seq[:, :3] = 0
seq[0, 3:] = 7  # one id repeated: its row gradients must add up
cols = torch.randint(0, 60, (32,))
backed = []

def table_grad(tied):
    model.zero_grad(set_to_none=True)
    hidden, catalog = model(seq, with_catalog=True) if tied else (model(seq), model.catalog())
    if tied:
        catalog.register_hook(lambda g: backed.append(table_backed(g, 61) is not None))
    flash_ce(hidden.reshape(-1, 16), catalog, cols).backward()
    return model.item_emb.weight.grad.clone()

tied, plain = table_grad(True), table_grad(False)
edge["tied"] = {"diff": (tied - plain).abs().max().item(), "scale": plain.abs().max().item(),
                "pad_row": tied[0].abs().sum().item(), "backed": backed == [True]}
out["edge"] = edge

def reuse(linear_ce):
    # Workspaces reused: three losses (two of one shape, one larger) built before any backward,
    # backwards in another order; then calls alternating shapes (the buffers grow, then serve
    # smaller shapes), the last a rerun of the first, bit for bit.
    split_lse_module.sm_count = real_sm_count
    fce._PLANS.clear()
    res = {}
    ops = [operands(37, 300, 24, "float32", seed=1), operands(37, 300, 24, "float32", seed=2),
           operands(130, 1000, 32, "float32", seed=3)]
    losses = [linear_ce(*op) for op in ops]
    for i in (2, 0, 1):
        losses[i].backward()
    res["outstanding"] = [compare(*op, loss) for op, loss in zip(ops, losses)]
    seq = []
    for shape in ((5, 129, 24), (130, 1000, 32), (5, 129, 24), (5, 1000, 24), (300, 40, 16), (37, 300, 64),
                  (5, 129, 24)):
        e, c, t = operands(*shape, "float32", seed=4)
        loss = linear_ce(e, c, t)
        loss.backward()
        seq.append((compare(e, c, t, loss), (loss.detach(), e.grad, c.grad)))
    res["shapes"] = [err for err, _ in seq]
    res["rerun_identical"] = all(torch.equal(a, b) for a, b in zip(seq[0][1], seq[-1][1]))
    return res

out["reuse"] = reuse(flash_linear_ce)

# Broken copies of the launchers: a module of their own, calling the real kernels.
launcher_source = open(launcher_path).read()
out["launcher_mutants"] = {}
for name, old, new in launcher_mutants:
    if launcher_source.count(old) != 1:
        out["launcher_mutants"][name] = "source text not found exactly once"
        continue
    mod = load_source("launcher_" + name, launcher_source.replace(old, new).replace(
        "@register(", "@(lambda **kw: (lambda f: f))("))
    real = fce
    fce = mod  # reuse() clears this module's plans
    try:
        out["launcher_mutants"][name] = reuse(mod.flash_linear_ce)
    except RuntimeError as err:  # e.g. autograd refusing a dC of another shape: caught, loudly
        out["launcher_mutants"][name] = {"raised": str(err).splitlines()[0][:300]}
    fce = real

# Broken copies of the kernels module, swapped in where the launchers import it from.
out["mutants"] = {}
for name, old, new in mutants:
    mod = load_mutant(kernels_path, old, new, name)
    if mod is None:
        out["mutants"][name] = "source text not found exactly once"
        continue
    core.losses.kernels.flash_ce = mod
    sys.modules["core.losses.kernels.flash_ce"] = mod
    out["mutants"][name] = [errors(*case) for case in cases[:4] + cases[-1:]]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = child_env(TRITON_INTERPRET="1")
    arg = json.dumps([CASES, MUTANTS, str(KERNELS), LAUNCHER_MUTANTS, str(LAUNCHER)])
    proc = subprocess.run([sys.executable, "-c", CHECK, arg], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=INTERPRETED_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _failures(case, err) -> list[str]:
    tol = TOL[case[3]]
    return [f"{what} {err[what]:.3g} > {tol:g}" for what in ("loss", "de", "dc") if not err[what] <= tol]


@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda i: "N%d-V%d-D%d-%s" % CASES[i][:4]
                         + ("-%dSMs" % CASES[i][4] if len(CASES[i]) > 4 else ""))
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


def test_the_tied_table_takes_the_dc_buffer_as_its_gradient(interpreted):
    tied = interpreted["edge"]["tied"]
    assert tied["backed"] and tied["pad_row"] == 0
    assert tied["diff"] <= 1e-5 * tied["scale"], tied


def test_reruns_are_bit_identical(interpreted):
    assert interpreted["edge"]["deterministic"]


@pytest.mark.parametrize("name", [m[0] for m in MUTANTS])
def test_broken_kernels_are_caught(interpreted, name):
    result = interpreted["mutants"][name]
    assert isinstance(result, list), f"{name}: {result}"  # the mutation applied
    caught = [_failures(case, err) for case, err in zip(CASES[:4] + CASES[-1:], result)]
    assert any(caught), f"mutant {name} passed every check: {result}"


def test_all_ignored_over_several_blocks_and_an_ignored_block(interpreted):
    loss, de_sum, dc_sum = interpreted["edge"]["all_ignored_130"]
    assert loss == "nan" and de_sum == 0.0 and dc_sum == 0.0
    err = interpreted["edge"]["block_ignored"]
    assert not _failures((130, 1000, 32, "float32"), err) and err["ignored_grad"] == 0.0, err


def test_fp32_catalog_with_fp16_hidden_states(interpreted):
    err = interpreted["edge"]["fp32_catalog"]
    assert not _failures((37, 300, 64, "float16"), err) and err["dc_dtype"] == "torch.float32", err


def _reuse_failures(res) -> list[str]:
    bad = [f"outstanding loss {i}: {f}" for i, err in enumerate(res["outstanding"])
           if (f := _failures((0, 0, 0, "float32"), err))]
    bad += [f"call {i} of the shape sequence: {f}" for i, err in enumerate(res["shapes"])
            if (f := _failures((0, 0, 0, "float32"), err))]
    return bad + ([] if res["rerun_identical"] else ["a rerun after other shapes differs"])


def test_workspaces_reused_across_outstanding_graphs_and_shapes(interpreted):
    """Losses built before either backward keep their own saved state; buffers grown by a
    larger shape serve smaller ones; a rerun after other shapes is bit-identical."""
    assert not _reuse_failures(interpreted["reuse"]), _reuse_failures(interpreted["reuse"])


@pytest.mark.parametrize("name", [m[0] for m in LAUNCHER_MUTANTS])
def test_broken_launchers_are_caught(interpreted, name):
    result = interpreted["launcher_mutants"][name]
    assert isinstance(result, dict), f"{name}: {result}"
    assert "raised" in result or _reuse_failures(result), f"launcher mutant {name} passed the reuse checks: {result}"


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


@pytest.mark.parametrize("argv,what", [(["--dims", "48"], "--dims"), (["--dims", "64,x"], "--dims"),
                                      (["--dims", ""], "--dims"), (["--regimes", "all"], "--regimes"),
                                      (["--vocab", "0"], "--regimes"), (["--kernels", "lse"], "--regimes")])
def test_tune_script_refuses_bad_arguments(argv, what, tmp_path, capsys):
    from kernels_bench import tune_flash_ce

    assert tune_flash_ce.main(["--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {what}")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# GPU (-m gpu): the compiled kernels at the shape, bf16.


def _gpu_inputs(n, v, d, seed=0, ignore=0.15):
    g = torch.Generator(device="cuda").manual_seed(seed)
    e = (torch.randn(n, d, device="cuda", generator=g) * d**-0.25).bfloat16().requires_grad_()
    c = (torch.randn(v, d, device="cuda", generator=g) * d**-0.25).bfloat16().requires_grad_()
    t = torch.randint(0, v, (n,), device="cuda", generator=g)
    t[torch.rand(n, device="cuda", generator=g) < ignore] = -100
    return e, c, t


def _gpu_errors(e, c, t, loss):
    import torch.nn.functional as F

    e64 = e.detach().double().requires_grad_()
    c64 = c.detach().double().requires_grad_()
    ref = F.cross_entropy(e64 @ c64.T, t, ignore_index=-100)
    ref.backward()
    rel = lambda a, b: (torch.linalg.norm(a.double() - b) / torch.linalg.norm(b)).item()  # noqa: E731
    return abs(loss.item() - ref.item()), rel(e.grad, e64.grad), rel(c.grad, c64.grad)


GPU_TOL = 2e-2  # gradients, bf16: P rounded to bf16 (2**-8 relative) before the gradient matmuls
# The loss is fp32 arithmetic on the bf16 operands the float64 reference also gets, so it is held
# much tighter: a slice merge without rescaling was 0.013 off at 560 x 50,000 (H200, call B),
# inside the gradients' tolerance.
GPU_LOSS_TOL = 1e-3


def _gpu_ok(err) -> bool:
    """(loss abs error, dE rel, dC rel) within tolerance (NaN is not)."""
    return err[0] < GPU_LOSS_TOL and err[1] < GPU_TOL and err[2] < GPU_TOL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_outstanding_losses_and_every_broken_kernel(tmp_path, monkeypatch):
    """Compiled: two losses built before either backward (plus one of another shape) match
    float64 and reruns bit for bit; every broken kernel of MUTANTS is caught at 560 x 50,000,
    with 15% or with 90% of the rows ignored (an ignored row weighed in dC adds only its small
    softmax terms: 0.008 of dC's norm at 15%, inside the bf16 tolerance, found under the
    interpreter at 560 x 12,000 with 132 stand-in SMs)."""

    from core.losses.flash_ce import flash_linear_ce

    ops = [_gpu_inputs(560, 50_000, 64, seed) for seed in (0, 1)] + [_gpu_inputs(1000, 20_729, 64, 2)]
    losses = [flash_linear_ce(*op) for op in ops]
    for i in (2, 0, 1):
        losses[i].backward()
    for op, loss in zip(ops, losses):
        assert _gpu_ok(_gpu_errors(*op, loss)), _gpu_errors(*op, loss)
        grads = (loss.detach().clone(), op[0].grad.clone(), op[1].grad.clone())
        op[0].grad = op[1].grad = None
        again = flash_linear_ce(*op)
        again.backward()
        assert all(torch.equal(a, b) for a, b in zip(grads, (again.detach(), op[0].grad, op[1].grad)))
    escaped = []
    for name, _, _ in MUTANTS:
        install_kernel_mutant(name, tmp_path, monkeypatch)
        errs = []
        for ignore in (0.15, 0.9):
            e, c, t = _gpu_inputs(560, 50_000, 64, ignore=ignore)
            loss = flash_linear_ce(e, c, t)
            loss.backward()
            errs.append(_gpu_errors(e, c, t, loss))
        if all(_gpu_ok(err) for err in errs):  # NaN counts as caught
            escaped.append((name, errs))
    assert not escaped, f"broken kernels not caught on the GPU: {escaped}"


def test_workspace_reuse_can_be_switched_off(monkeypatch):
    """``REUSE_WORKSPACES = False`` (eager_point --fresh-workspaces) gives a fresh buffer per call."""
    fce = sys.modules["core.losses.flash_ce"]
    cpu = torch.device("cpu")
    first = fce._workspace(cpu, "test", 10)
    assert fce._workspace(cpu, "test", 10).data_ptr() == first.data_ptr()  # reused
    monkeypatch.setattr(fce, "REUSE_WORKSPACES", False)
    fresh = fce._workspace(cpu, "test", 10)
    assert fresh.data_ptr() != first.data_ptr() and fresh.numel() >= 10


def install_kernel_mutant(name: str, folder, monkeypatch) -> None:
    """Swaps in MUTANTS' broken copy ``name`` of the kernels module (written under ``folder``),
    where the launchers import it from, for the rest of the test (GPU mutant tests)."""
    import core.losses.kernels
    from tests.mutants import load_mutant

    old, new = next((o, n) for m, o, n in MUTANTS if m == name)
    mutant = load_mutant(KERNELS, old, new, name, folder)
    assert mutant is not None, name
    monkeypatch.setattr(core.losses.kernels, "flash_ce", mutant, raising=False)
    monkeypatch.setitem(sys.modules, "core.losses.kernels.flash_ce", mutant)


def test_the_stand_in_sm_case_spans_several_merge_chunks(monkeypatch):
    """CASES' last entry must cut the catalog into more slices than one chunk of the finish
    kernel's LSE merge (32) and of dE's (16), else their mutants go unseen (they did when the
    forward's tiles changed): checked against the tile table as it stands."""
    import core.losses.split_lse as split_lse_module

    module = importlib.import_module("core.losses.flash_ce")  # the module, not the function
    n, v, d, _, sms = CASES[-1]
    monkeypatch.setattr(split_lse_module, "sm_count", lambda device: sms)
    plan = module._Plan(torch.device("cpu"), torch.float32, n, v, d)
    assert plan.lse_splits > max(plan.fin_meta["BLOCK_S"], plan.de_meta["BLOCK_S"]), plan.lse_splits


def test_small_catalogs_with_many_rows_take_their_own_backward_tiles():
    module = importlib.import_module("core.losses.flash_ce")  # the module, not the function

    assert module.tiles("dc", 12_800, 64, 20_729) == (128, 128, 4, 3)
    for kernel in ("lse", "fwd"):
        assert module.tiles(kernel, 12_800, 64, 20_729) == module._TILES[64][kernel][1]
    for n, v, d in ((12_800, 207_649, 64), (560, 20_729, 64), (12_800, 20_729, 128)):  # elsewhere: the table
        for kernel in ("lse", "fwd", "dc"):
            assert module.tiles(kernel, n, d, v) == module.tiles(kernel, n, d)
    assert module._Plan(torch.device("cpu"), torch.float32, 12_800, 20_729, 64).dc_meta["BLOCK_N"] == 128
