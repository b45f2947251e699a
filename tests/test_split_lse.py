"""The split log-sum-exp forward (core/losses/split_lse.py, core/losses/kernels/split_lse.py)
computes, bit for bit, what its two users computed when each had its own kernel.

Until issue 20, ``flash_ce`` and ``cce``'s split forward each had an online split log-sum-exp
kernel. ``ORACLE`` below is a verbatim copy of both (from core/losses/kernels/flash_ce.py and
core/losses/kernels/cce_split.py before the merge) and ``OLD_LAUNCH`` their launchers' tile
choices, so that changing the shared kernel's arithmetic (an exp for an exp2, the order of a
sum, a mask) keeps failing here even where a float64 tolerance would still pass. The grid uses
the shared ``sm_count``: on a GPU that is what both launchers used, under the interpreter it is
a stand-in either way.

On the CPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set before Triton
decorates them, hence a subprocess); float32 and float16 only (the interpreter mishandles
bfloat16). ``MUTANTS`` are one-line changes to the shared kernel that keep its result within
float tolerance or break it outright; each must be caught. The GPU case (``-m gpu``) compiles
both for CUDA, bfloat16 included, at recommender shapes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.child_env import INTERPRETED_TIMEOUT_S, child_env
import torch

REPO = Path(__file__).resolve().parents[1]
KERNEL = REPO / "core" / "losses" / "kernels" / "split_lse.py"

ORACLE = r'''
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _lse_kernel(
    E, C, PartLSE, N, V, D, stride_e, stride_c, tiles_per_split,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (row block, slice): PartLSE[slice, rows] = log sum over the slice's items of exp(logit)."""
    pid_n, pid_s = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    e = tl.load(E + offs_n[:, None].to(tl.int64) * stride_e + offs_d[None, :],
                mask=(offs_n < N)[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
    run_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_N,), tl.float32)
    for t in range(tiles_per_split):
        offs_v = (pid_s * tiles_per_split + t) * BLOCK_V + tl.arange(0, BLOCK_V)
        v_mask = offs_v < V
        c = tl.load(C + offs_v[:, None].to(tl.int64) * stride_c + offs_d[None, :],
                    mask=v_mask[:, None] & d_mask[None, :], other=0.0).to(e.dtype)  # (BLOCK_V, BLOCK_D)
        logits = tl.dot(e, tl.trans(c), input_precision=PRECISION)  # (BLOCK_N, BLOCK_V) fp32
        logits = tl.where(v_mask[None, :], logits, float("-inf"))
        logits = logits * LOG2E  # base-2 units from here on
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        # A slice's first tile always holds items, so new_max is finite from there on.
        run_sum = run_sum * tl.exp2(run_max - new_max) + tl.sum(tl.exp2(logits - new_max[:, None]), axis=1)
        run_max = new_max
    tl.store(PartLSE + pid_s * N + offs_n, (run_max + tl.log2(run_sum)) * LN2, mask=offs_n < N)


@triton.jit
def _split_lse_kernel(
    E, C, PartLSE,
    B, V, D, stride_eb, stride_cv, stride_pb, tiles_per_split,
    BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Program (row block b, catalog slice s): partial LSE of rows b over the items of slice s."""
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = offs_b < B
    offs_d = tl.arange(0, BLOCK_D)

    run_max = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_B,), tl.float32)
    for t in range(tiles_per_split):
        offs_v = (pid_s * tiles_per_split + t) * BLOCK_V + tl.arange(0, BLOCK_V)
        v_mask = offs_v < V
        logits = tl.zeros((BLOCK_B, BLOCK_V), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d_mask = (d0 + offs_d) < D
            e = tl.load(E + offs_b[:, None] * stride_eb + (d0 + offs_d)[None, :],
                        mask=b_mask[:, None] & d_mask[None, :], other=0.0)
            c = tl.load(C + offs_v[None, :] * stride_cv + (d0 + offs_d)[:, None],
                        mask=v_mask[None, :] & d_mask[:, None], other=0.0).to(e.dtype)
            logits = tl.dot(e, c, logits, input_precision=PRECISION)  # (BLOCK_B, BLOCK_V)
        logits = tl.where(v_mask[None, :], logits, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        # The first tile of a slice always holds items, so new_max is finite from then on.
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max
    tl.store(PartLSE + pid_s * stride_pb + offs_b, run_max + tl.log(run_sum), mask=b_mask)
'''

# Deliberately broken shared kernels: (name, exact source text, replacement). Each must be caught.
MUTANTS = [
    ("base2_lse_in_natural_log",  # the same number, computed in another order: off by an ulp
     "lse = (run_max + tl.log2(run_sum)) * LN2", "lse = run_max * LN2 + tl.log(run_sum)"),
    ("natural_exp_as_exp2",  # exp(x) as exp2(x * log2 e): equal within float tolerance
     "run_sum = run_sum * tl.exp(run_max - new_max)", "run_sum = run_sum * tl.exp2((run_max - new_max) * LOG2E)"),
    ("unmasked_padding",  # padded items (logit 0) enter the log-sum-exp
     'logits = tl.where(v_mask[None, :], logits, float("-inf"))', "logits = logits"),
    ("last_chunk_skipped",  # the chunked head dim stops one chunk early
     "for d0 in range(0, D, BLOCK_D):", "for d0 in range(0, D - BLOCK_D, BLOCK_D):"),
]

# (N, V, D): one slice and many, V never a tile multiple, D below / at / above cce's 64-wide
# chunk (100, 123, 130: two or three chunks), a single row, more rows than one block.
CASES = [(5, 129, 24), (37, 1000, 64), (130, 3001, 100), (70, 200, 16), (1, 33, 7), (90, 517, 123),
         (200, 300, 130)]
# Mutants that compile to the same instructions on an NVIDIA GPU, so only the interpreter can tell
# them apart: Triton lowers tl.exp(x) to ex2.approx(x * log2 e), which is what
# "natural_exp_as_exp2" writes out by hand (bit-identical on the H200, session-3 call A of
# 2026-12-02, results/gpu_suite_2026-12-02b). An equivalent mutant, not a blind spot of the test.
CUDA_EQUIVALENT = {"natural_exp_as_exp2"}
# First: a head dim cce's kernel loops over in chunks (100 = 64 + 36): the GPU's mutants run on it.
GPU_CASES = [(300, 2049, 100), (560, 20011, 64), (12800, 5003, 128), (97, 1031, 256), (1, 33, 7)]

CHECK = r"""
import json, sys
import torch
import triton
import core.losses.kernels
from core.losses.flash_ce import _block_d, lse_forward, tiles
from core.losses.kernels.cce_split import split_lse as cce_split_lse
from core.losses.split_lse import sm_count

oracle_src, mutants, kernel_path, cases, dtypes, device, mutant_inputs = json.loads(sys.argv[1])

from tests.mutants import load_source as load

old = load("old_split_lse_kernels", oracle_src)

def old_grid(n_tiles, n_b, device):  # both launchers' slice count, as it was
    splits = max(1, min(n_tiles, -(-4 * sm_count(device) // n_b)))
    per_split = -(-n_tiles // splits)
    return -(-n_tiles // per_split), per_split

def old_flash(e, c):  # core/losses/flash_ce.py's lse_forward before the merge
    (n, d), v = e.shape, c.shape[0]
    block_n, block_v, warps, stages = tiles("lse", n, d)
    n_blocks = -(-n // block_n)
    splits, per_split = old_grid(-(-v // block_v), n_blocks, e.device)
    part = torch.empty((splits, n), dtype=torch.float32, device=e.device)
    old._lse_kernel[(n_blocks, splits)](
        e, c, part, n, v, d, e.stride(0), c.stride(0), per_split,
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_D=_block_d(d),
        PRECISION="ieee" if e.dtype == torch.float32 else "tf32", num_warps=warps, num_stages=stages)
    return torch.logsumexp(part, dim=0) if splits > 1 else part[0]

def old_cce(e, c):  # core/losses/kernels/cce_split.py's split_lse before the merge
    (n, d), v = e.shape, c.shape[0]
    block_b = 64 if n <= 4096 else 128
    block_d = min(64, max(16, triton.next_power_of_2(d)))
    n_b = triton.cdiv(n, block_b)
    splits, per_split = old_grid(triton.cdiv(v, 128), n_b, e.device)
    part = torch.empty((splits, n), dtype=torch.float32, device=e.device)
    old._split_lse_kernel[(n_b, splits)](
        e, c, part, n, v, d, e.stride(0), c.stride(0), part.stride(0), per_split,
        BLOCK_B=block_b, BLOCK_V=128, BLOCK_D=block_d,
        PRECISION="ieee" if e.dtype == torch.float32 else "tf32", num_warps=4, num_stages=3)
    return torch.logsumexp(part, dim=0) if splits > 1 else part[0]

inputs = []
g = torch.Generator().manual_seed(0)
for n, v, d in cases:
    e, c = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g) * 0.5
    for dtype in dtypes:
        # an fp32 catalog with 16-bit hidden states: the kernels cast catalog tiles as they load
        for c_dtype in {getattr(torch, dtype), torch.float32}:
            inputs.append(([n, v, d, dtype, str(c_dtype)], e.to(getattr(torch, dtype)).to(device),
                           c.to(c_dtype).to(device)))
expected = [(old_flash(e, c), old_cce(e, c)) for _, e, c in inputs]

def differences(limit=None):
    # the new path against the old kernels: the cases (and which user) where any bit differs
    out = []
    for (case, e, c), (flash_old, cce_old) in list(zip(inputs, expected))[:limit]:
        for user, got, want in (("flash_ce", lse_forward(e, c), flash_old),
                                ("cce", cce_split_lse(e, c)[0], cce_old)):
            if not torch.equal(got, want):
                out.append([user, *case, (got.double() - want.double()).abs().max().item()])
    return out

result = {"new": differences(), "old_sane": [], "mutants": {}}
# The oracle itself is right (so "bit-identical" is not "identically wrong").
for (case, e, c), (flash_old, cce_old) in zip(inputs, expected):
    ref = torch.logsumexp(e.double() @ c.to(e.dtype).double().T, 1)
    result["old_sane"].append([*case, (flash_old.double() - ref).abs().max().item(),
                               (cce_old.double() - ref).abs().max().item()])
source = open(kernel_path).read()
for name, text, replacement in mutants:
    if source.count(text) != 1:
        result["mutants"][name] = "source text not found exactly once"
        continue
    mod = load("mutant_" + name, source.replace(text, replacement))
    core.losses.kernels.split_lse = mod
    sys.modules["core.losses.kernels.split_lse"] = mod
    result["mutants"][name] = differences(mutant_inputs)
print(json.dumps(result))
"""


def _run(device: str, cases, dtypes, interpret: bool, mutants=MUTANTS, mutant_inputs=None) -> dict:
    """The check in a child process; mutants are run on the first ``mutant_inputs`` (case, dtype)
    inputs only (all by default): every mutant breaks every input, compiling them all is slow."""
    env = child_env()
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    arg = json.dumps([ORACLE, mutants, str(KERNEL), cases, dtypes, device, mutant_inputs])
    proc = subprocess.run([sys.executable, "-c", CHECK, arg], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=INTERPRETED_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return _run("cpu", CASES, ["float32", "float16"], interpret=True)


def _check(result: dict, tol: dict):
    assert not result["new"], f"the shared kernel differs from the old ones: {result['new']}"
    for n, v, d, dtype, c_dtype, flash_err, cce_err in result["old_sane"]:
        assert flash_err < tol[dtype] and cce_err < tol[dtype], (n, v, d, dtype, c_dtype, flash_err, cce_err)
    assert len(result["old_sane"]) >= len(CASES)
    for name, diffs in result["mutants"].items():
        assert isinstance(diffs, list), f"{name}: {diffs}"  # the mutation applied
        assert diffs, f"mutant {name} matched the old kernels bit for bit"


def test_split_lse_is_bit_identical_to_the_old_kernels(interpreted):
    _check(interpreted, {"float32": 5e-5, "float16": 5e-5})


def test_every_mutant_ran(interpreted):
    assert set(interpreted["mutants"]) == {m[0] for m in MUTANTS}
    assert CUDA_EQUIVALENT < {m[0] for m in MUTANTS}  # a renamed mutant must not drop out silently


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_split_lse_is_bit_identical_to_the_old_kernels_on_the_gpu():
    """Compiled for the GPU (tensor cores, real SM count), bfloat16 included."""
    mutants = [m for m in MUTANTS if m[0] not in CUDA_EQUIVALENT]
    # mutants on the first case's five inputs (D = 100: two chunks in cce's kernel; at D = 64 the
    # chunk loop runs once, so the GPU showed 'last_chunk_skipped' passing there, call B): fp32,
    # fp16 and bf16 (the 16-bit ones with an fp32 catalog too)
    result = _run("cuda", GPU_CASES, ["float32", "float16", "bfloat16"], interpret=False,
                  mutants=mutants, mutant_inputs=5)
    # fp32 logits over D <= 256 unit-variance products; tf32 is not used (ieee for fp32).
    _check(result, {"float32": 1e-4, "float16": 1e-3, "bfloat16": 1e-3})
