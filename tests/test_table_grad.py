"""core.table_grad.add_rows_ (an embedding's row gradients added into its table's gradient in
place, the tied item table's backward) and the tied table under the graphed step's compiled
forward block.

Both kernels (the sorted one, ``add_sorted_rows_``, and the scan for few ids,
``add_scanned_rows_``) run every case. On the CPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1 set before Triton
decorates it, hence one child process for the module) against a float64 ``index_add_`` oracle:
a run of 300 repeats of one id (several chunks), the padding id 0 (must get nothing), the
table's last row, T not a multiple of anything, D = 24, 64 and 160 (two column blocks), fp32
and fp16 rows (the interpreter mishandles bf16), one position and none, bit-identical reruns.
Every case is launched on the first T entries of longer buffers whose tail continues the last
id's run (the scan: repeats the largest id), so a kernel reading past T adds rows it must not
(and reads no memory outside a tensor). The scan compares 16 ids a step here (several steps). The checks must be able to fail: broken copies of the kernel (MUTANTS, one source
line changed each, run on the kernel it breaks) must each miss the tolerance. The tied table under the compiled forward
block: tests/test_graph_step.py (``test_the_compiled_forward_block_steps_like_the_eager_one``,
against the untied eager block). ``-m gpu``: the same on CUDA at 1,024 and
12,800 positions over 207,649 and 20,730 rows, with skewed ids.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.child_env import REPO, child_env, run_interpreted

KERNEL = REPO / "core" / "table_grad_kernel.py"
# (T, R, D, row dtype, repeats of one id): see the module docstring.
CASES = [
    (341, 60, 24, "float32", 300),
    (77, 30, 64, "float16", 0),
    (29, 400, 160, "float32", 0),
    (1, 5, 8, "float32", 0),
]
MUTANT_CASES = (0, 2)  # the long run and the two column blocks
# Relative to |table| + sum |rows| per entry: fp32 accumulation of at most a few hundred rows
# (chunks of 8-64 summed by tl.sum, the chunks in order) is a few 1e-7 at most.
TOL = 1e-5

# Deliberately broken kernels: (name, exact source text, replacement). Each must be caught.
MUTANTS = [
    ("first_chunk_only",  # a run longer than one chunk keeps its first chunk's rows
     "more = tl.sum(in_seg.to(tl.int32), axis=0) == CHUNK", "more = tl.sum(in_seg.to(tl.int32), axis=0) == CHUNK + 1"),
    ("chunk_stride_skips_a_row",  # each chunk after the first starts one position late
     "pos += CHUNK", "pos += CHUNK + 1"),
    ("last_row_dropped",  # the last sorted position (the last run's last row) is never added
     "in_range = pos < T", "in_range = pos < T - 1"),
    ("past_T",  # off by one: position T (outside the ids) read as part of the last run
     "in_range = pos < T", "in_range = pos <= T"),
    ("start_vs_next",  # a run's start detected against the next id instead of the previous one
     "prev = tl.load(SortedIds + tl.maximum(p - 1, 0))", "prev = tl.load(SortedIds + tl.minimum(p + 1, T - 1))"),
    ("padding_not_skipped",  # the padding id's rows added into row 0
     "starts = (item != 0) & ((p == 0) | (prev != item))", "starts = (p == 0) | (prev != item)"),
    ("store_not_add",  # the sum overwrites the table's row instead of adding to it
     "tl.store(out, tl.load(out, mask=d_mask, other=0.0) + acc, mask=d_mask)", "tl.store(out, acc, mask=d_mask)"),
    ("rows_in_sorted_order",  # rows read at their sorted position, not where their id came from
     "src = tl.load(Order + pos, mask=in_seg, other=0)", "src = pos"),
    ("one_column_block",  # every column block adds the first block's columns
     "offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)\n    d_mask = offs_d < D\n    item = tl.load(SortedIds",
     "offs_d = tl.arange(0, BLOCK_D)\n    d_mask = offs_d < D\n    item = tl.load(SortedIds"),
    # the scan (no sort) kernel
    ("scan_no_first_test",  # every position of an id adds the id's rows from there on
     "if (item != 0) & (tl.sum(earlier, axis=0) == 0):", "if item != 0:"),
    ("scan_counts_itself",  # a position counts itself as earlier: no id is ever added
     "earlier += (tl.load(Ids + j, mask=j < i, other=0) == item)", "earlier += (tl.load(Ids + j, mask=j <= i, other=0) == item)"),
    ("scan_step_skips_a_position",  # each comparison step skips its first position
     "        j = j0 + tl.arange(0, SCAN)", "        j = j0 + 1 + tl.arange(0, SCAN)"),
    ("scan_own_row_left_out",  # the first position's own row is not summed
     "for j0 in range(i, T, CHUNK):", "for j0 in range(i + 1, T, CHUNK):"),
    ("scan_past_T",  # off by one: position T (outside the ids) summed with its id's rows
     "same = tl.load(Ids + j, mask=j < T, other=0) == item", "same = tl.load(Ids + j, mask=j <= T, other=0) == item"),
    ("scan_padding_added",  # the padding id's rows added into row 0
     "if (item != 0) & (tl.sum(earlier, axis=0) == 0):", "if tl.sum(earlier, axis=0) == 0:"),
    ("scan_store_not_add",  # the sum overwrites the table's row instead of adding to it
     "tl.store(out, acc + tl.load(out, mask=d_mask, other=0.0), mask=d_mask)", "tl.store(out, acc, mask=d_mask)"),
    ("scan_one_column_block",  # every column block adds the first block's columns
     "offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)\n    d_mask = offs_d < D\n    item = tl.load(Ids",
     "offs_d = tl.arange(0, BLOCK_D)\n    d_mask = offs_d < D\n    item = tl.load(Ids"),
]
SCAN_MUTANTS = [m[0] for m in MUTANTS if m[0].startswith("scan_")]
PAD = 65  # past the ids: more than a chunk (at most 64) of the last id's run, rows from row 0


def make_case(t: int, r: int, d: int, dtype: str, repeats: int = 0, seed: int = 0, skewed: bool = False,
              device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(table (r, d) fp32, ids (t,), rows (t, d) ``dtype``): random ids with ~10% padding, the
    last row present, ``repeats`` positions of one id (7) scattered among them; ``skewed``:
    ids log-uniform over [1, r) (id 1 ~5-7% of positions at these sizes, as popular items)."""
    g = torch.Generator().manual_seed(seed)
    if skewed:
        ids = (float(r - 1) ** torch.rand(t, generator=g, dtype=torch.float64)).long().clamp(1, r - 1)
    else:
        ids = torch.randint(1, r, (t,), generator=g)
    ids[torch.rand(t, generator=g) < 0.1] = 0
    ids[:repeats] = 7
    if t >= 3:
        ids[repeats:repeats + 2] = r - 1
    ids = ids[torch.randperm(t, generator=g)]
    table = torch.randn(r, d, generator=g)
    rows = torch.randn(t, d, generator=g).to(getattr(torch, dtype))
    return table.to(device), ids.to(device), rows.to(device)


def oracle(table: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64 ``table`` with the rows of non-padding ids added, the entries' scale |table| + sum |rows|)."""
    keep = ids != 0
    ids, rows = ids[keep], rows[keep].double()
    return (table.double().index_add_(0, ids, rows),
            table.double().abs().index_add_(0, ids, rows.abs()).clamp_min(1e-30))


def add_padded(add_sorted_rows_, table, ids, rows) -> torch.Tensor:
    """``add_rows_`` through ``add_sorted_rows_`` on the first T entries of buffers PAD longer,
    whose tail continues the last sorted id's run (pointing at row 0): a kernel reading past T
    adds it; ``table`` is updated in place and returned."""
    order = torch.sort(ids, stable=True)
    t = ids.shape[0]
    tail = order.values[-1:] if t else ids.new_ones(1)
    sorted_ids = torch.cat([order.values, tail.expand(PAD)])
    where = torch.cat([order.indices, order.indices.new_zeros(PAD)])
    return add_sorted_rows_(table, sorted_ids[:t], where[:t], rows)


def add_scanned_padded(add_scanned_rows_, table, ids, rows) -> torch.Tensor:
    """``add_scanned_rows_`` on the first T entries of buffers PAD longer whose tail holds the
    largest id (with rows of ones): a kernel reading past T adds them to that id's row."""
    t = ids.shape[0]
    tail = ids.max().reshape(1) if t else ids.new_ones(1)
    ids_buf = torch.cat([ids, tail.expand(PAD)])
    rows_buf = torch.cat([rows, rows.new_ones(PAD, rows.shape[1])])
    return add_scanned_rows_(table, ids_buf[:t], rows_buf[:t])


def error(out: torch.Tensor, table: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> float:
    """Largest |out - oracle| / scale over the table's entries (NaN counts as an error)."""
    ref, scale = oracle(table, ids, rows)
    err = ((out.double() - ref).abs() / scale).nan_to_num(float("inf"))
    return err.max().item() if err.numel() else 0.0


CHECK = r"""
import json, sys
import torch
import core
import core.table_grad as table_grad
from tests.mutants import each_mutant
from tests.test_table_grad import add_padded, add_scanned_padded, error, make_case

cases, mutant_cases, mutants, kernel_path = json.loads(sys.argv[1])
table_grad.SCAN_IDS = 16  # the scan kernel's comparison loop takes several steps at these T


def run(case, kernels=("sort", "scan")):
    table, ids, rows = make_case(*case)
    errs = []
    if "sort" in kernels:
        errs.append(error(add_padded(table_grad.add_sorted_rows_, table.clone(), ids, rows), table, ids, rows))
    if "scan" in kernels:
        errs.append(error(add_scanned_padded(table_grad.add_scanned_rows_, table.clone(), ids, rows), table, ids, rows))
    return max(errs)


res = {"cases": [run(case) for case in cases]}
table, ids, rows = make_case(*cases[1])
outs = [table_grad.add_rows_(table.clone(), ids, rows) for _ in range(3)]  # the public entry point (scan)
table_grad.SCAN_MAX_IDS = 10  # and where it sorts
outs += [table_grad.add_rows_(table.clone(), ids, rows) for _ in range(2)]
res["public"] = max(error(o, table, ids, rows) for o in outs)
res["reruns_equal"] = all(torch.equal(outs[0], o) for o in outs[1:3]) and torch.equal(outs[3], outs[4])
empty = table.clone()
table_grad.add_rows_(empty, ids[:0], rows[:0])
res["empty_untouched"] = torch.equal(empty, table)
# each broken copy runs the one kernel it breaks (the other's source is unchanged)
scan = [m for m in mutants if m[0].startswith("scan_")]
res["mutants"] = each_mutant(kernel_path, [m for m in mutants if m not in scan], "core.table_grad_kernel",
                             lambda: [run(cases[i], ("sort",)) for i in mutant_cases])
res["mutants"].update(each_mutant(kernel_path, scan, "core.table_grad_kernel",
                                  lambda: [run(cases[i], ("scan",)) for i in mutant_cases]))
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted(CHECK, [CASES, MUTANT_CASES, MUTANTS, str(KERNEL)])


@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda i: "T%d-R%d-D%d-%s-x%d" % CASES[i])
def test_rows_added_match_float64(interpreted, index):
    assert interpreted["cases"][index] <= TOL


def test_the_public_launcher_matches_and_reruns_bit_for_bit(interpreted):
    assert interpreted["public"] <= TOL
    assert interpreted["reruns_equal"]
    assert interpreted["empty_untouched"]


@pytest.mark.parametrize("name", [m[0] for m in MUTANTS])
def test_broken_kernels_are_caught(interpreted, name):
    result = interpreted["mutants"][name]
    assert isinstance(result, list), f"{name}: {result}"  # applied: its source text was found
    assert max(result) > 100 * TOL, f"{name} not caught: {result}"


# Without the interpreter.


def test_bad_arguments_are_refused():
    from core.table_grad import add_rows_, add_sorted_rows_

    with pytest.raises(ValueError, match="rows"):
        add_rows_(torch.zeros(5, 4), torch.zeros(3, dtype=torch.int64), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="fp32"):
        add_sorted_rows_(torch.zeros(5, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.int64),
                         torch.zeros(3, dtype=torch.int64), torch.zeros(3, 4))


def test_importing_the_model_imports_no_triton():
    code = "import sys, core.model; assert 'triton' not in sys.modules, 'triton imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# On a GPU: the kernel compiled, at the training step's sizes.

GPU_SIZES = [(t, r, 64) for r in (207_649, 20_730) for t in (1_024, 2_048, 12_800)]


def _gpu_errors(kernel_module=None) -> list[float]:
    import core.table_grad as table_grad

    errs = []
    for t, r, d in GPU_SIZES + [(1_024, 20_730, 160)]:  # the last: 2 column blocks
        table, ids, rows = make_case(t, r, d, "float32", seed=t + r + d, skewed=True, device="cuda")
        errs.append(error(add_padded(table_grad.add_sorted_rows_, table.clone(), ids, rows), table, ids, rows))
        if t <= table_grad.SCAN_MAX_IDS:
            out = add_scanned_padded(table_grad.add_scanned_rows_, table.clone(), ids, rows)
            errs.append(error(out, table, ids, rows))
    return errs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_kernel_matches_float64_reruns_bit_for_bit_and_catches_broken_kernels(tmp_path, monkeypatch):
    import core
    from core.table_grad import add_rows_
    from tests.mutants import load_mutant

    errs = _gpu_errors()
    assert max(errs) <= TOL, errs
    table, ids, rows = make_case(12_800, 20_730, 64, "float32", skewed=True, device="cuda")
    assert (torch.bincount(ids).max() > 300).item()  # a long run of a popular item
    outs = [add_rows_(table.clone(), ids, rows) for _ in range(3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    table, ids, rows = make_case(1_024, 207_649, 64, "float32", skewed=True, device="cuda")  # the scan
    outs = [add_rows_(table.clone(), ids, rows) for _ in range(3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    escaped = []
    for name, old, new in MUTANTS:
        mutant = load_mutant(KERNEL, old, new, name, tmp_path)
        assert mutant is not None, name
        monkeypatch.setattr(core, "table_grad_kernel", mutant, raising=False)
        monkeypatch.setitem(sys.modules, "core.table_grad_kernel", mutant)
        errs = _gpu_errors()
        if not max(errs) > 100 * TOL:
            escaped.append((name, errs))
    assert not escaped, f"broken kernels not caught on the GPU: {escaped}"
