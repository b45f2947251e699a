"""The fused chunk top-k (core/eval_kernels.py) against a float64 oracle and ``core.metrics.chunk_top``.

On the CPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set before Triton
decorates them, hence one subprocess for the module, ``CHECK`` below, printing JSON). The
interpreter's ``tl.dot`` is a numpy matmul, not the GPU's FMA chain, so bit-identity between
``group_max`` and ``score_columns`` cannot be seen here: the data are INTEGER-VALUED fp32 (small
ints in [-3, 3], |score| <= 9 D), whose every summation order gives the same exact sum, so every
result is compared EXACTLY with the float64 oracle: ``group_max`` (both tile arithmetics) with
the grouped max, ``score_columns`` / ``target_scores`` with the masked scores (history, padding
columns), ``fused_chunk_top`` with ``chunk_top`` over the oracle's masked chunk: values and tie
flag equal, NaN rows equal, and columns equal wherever the tie rule leaves no choice (integer
scores tie a lot: which tied item fills the k-th place, and the order among equal values, are
torch.topk's choice in both). Edge cases: users with no history, a long one, duplicates, history
outside [lo, hi), a whole group masked, fewer than k unmasked items, a NaN in a catalog row (also
in one user's history, where it is masked), lo / hi not multiples of the group, D = 16, 24
(masked head dim), 64, small chunks (n_groups <= k + 1, fewer than k columns). One random
(non-integer) case against float64 within 1e-5.

The checks must be able to fail: ``MUTANTS`` are one-line broken copies of core/eval_kernels.py,
run in the same subprocess on the cases ``MUTANT_CASES``; each must be caught.

On a GPU (``-m gpu``): bit-identity of ``group_max`` (tl.dot and explicit FMA) with the maxima of
``score_columns`` over every column (the check that decides ``DEFAULT_EXPLICIT_FMA``), the fused
top-k against ``chunk_top`` over torch's materialized fp32 scores, without a host sync, and NaN.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.child_env import run_interpreted

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "core" / "eval_kernels.py"

# (B, V, D, lo, hi, group, k, seed, nan, integer); the cases MUTANT_CASES (indices) also run every mutant.
CASES = [
    (97, 700, 64, 45, 655, 16, 10, 0, True, True),  # NaN in the chunk; 39 groups, the last partial
    (130, 1000, 24, 101, 999, 64, 10, 1, False, True),  # D masked to 32, three user blocks
    (50, 300, 16, 7, 250, 16, 10, 2, True, True),
    (60, 400, 24, 150, 270, 16, 10, 3, False, True),  # 8 groups <= k + 1: chunk_top's fallback
    (40, 400, 16, 390, 397, 16, 10, 4, False, True),  # 7 columns < k: sentinel padding
    (64, 600, 64, 33, 580, 16, 10, 5, False, False),  # random data: float64 within 1e-5
    (50, 300, 16, 9, 251, 16, 3, 6, True, True),  # k = 3: ties seen only through the (k+1)-th group max
]
MUTANT_CASES = [6]  # one case catches them all; the interpreter is slow

# Deliberately broken copies of core/eval_kernels.py: (name, exact source text, replacement).
MUTANTS = [
    ("history_mask_ignored",  # score_columns scores history columns
     'acc = tl.where(valid & ~seen, acc, float("-inf"))', 'acc = tl.where(valid, acc, float("-inf"))'),
    ("nan_not_propagated",  # group_max trusts tl.max with NaN
     'group_max = tl.where(has_nan, float("nan"), group_max)', "group_max = group_max"),
    ("last_partial_group_dropped",  # the chunk's last, partial group is never looked at
     "return -(-w // group)", "return w // group"),
    ("lo_offset_ignored",  # group_max's groups start at column 0, not lo
     "offs_v = lo + g0 * GROUP + tl.arange(0, TILE)", "offs_v = g0 * GROUP + tl.arange(0, TILE)"),
    ("poisoned_groups_not_recomputed",  # a group's max may be a history item
     "m.index_put_((pair_rows, g_h), redo)", "m = m"),
    ("tie_from_values_only",  # misses a tied item outside the k best groups
     "after = torch.maximum(values[:, k], gmax[:, k])", "after = values[:, k]"),
    ("padding_columns_unmasked",  # group_max's last group counts columns past hi (scored 0)
     'acc = tl.where(v_mask[None, :], acc, float("-inf"))', "acc = acc"),
    ("candidate_columns_shifted",  # the top-k's columns lose the chunk offset (values still right)
     "cols = cand.gather(1, pos)", "cols = cand.gather(1, pos) - lo"),
    ("fma_chain_stops_early",  # score_columns forgets the head dim's last element
     "for k in range(BLOCK_D):  # the chain", "for k in range(BLOCK_D - 1):  # the chain"),
    ("score_groups_history_ignored",
     'score = tl.where(c_ok[None, :] & ~seen, acc, float("-inf"))', 'score = tl.where(c_ok[None, :], acc, float("-inf"))'),
    ("score_groups_stores_every_row",  # a group's scores stored over the rows of the block's other groups too
     "score, mask=mine[:, None])", "score, mask=r_ok[:, None])"),
    ("score_groups_past_hi",  # columns past the range's end scored
     "c_ok = cols < hi", "c_ok = cols < hi + GROUP"),
    ("score_groups_first_history_item_only",  # only each row's first history item compared
     "for h in range(0, n_h):", "for h in range(0, tl.minimum(n_h, 1)):"),
    ("score_groups_run_from_last_block_skipped",  # a group's run that began in the previous block is not scored here
     "if (pid * ROWS + j < N) & ((j == 0) | (g != prev)):", "if (pid * ROWS + j < N) & (g != prev):"),
]

CHECK = r"""
import json, sys
import torch
from core import eval_kernels
from core.metrics import NEG_INF, canonical_order, chunk_top
from tests.mutants import load_mutant

cases, mutants, module_path, mutant_cases = json.loads(sys.argv[1])

def make(B, V, D, lo, hi, group, k, seed, nan, integer):
    g = torch.Generator().manual_seed(seed)
    if integer:
        users = torch.randint(-3, 4, (B, D), generator=g).float()
        catalog = torch.randint(-3, 4, (V, D), generator=g).float()
    else:
        users, catalog = torch.randn(B, D, generator=g), torch.randn(V, D, generator=g)
    # history pairs (row, column): none for every 7th user, a long one (a whole group and more),
    # duplicates, almost the whole chunk for one user, the rest a few random columns anywhere
    rows, cols = [], []
    for b in range(B):
        if b % 7 == 0:
            continue
        if b == 1:
            items = list(range(lo, min(hi, lo + 3 * group))) + torch.randint(0, V, (40,), generator=g).tolist()
        elif b == 2:
            items = [lo + 5, lo + 5, lo + 5, hi - 1, hi - 1, 0, V - 1]
        elif b == 3 and hi - lo <= 250:  # all but 4 columns of the chunk: fewer than k left (slow: small chunks)
            items = [j for j in range(lo, hi) if (j - lo) % max(1, (hi - lo) // 4) != 1]
        else:
            items = torch.randint(0, V, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        rows += [b] * len(items)
        cols += items
    if nan:
        j = lo + (hi - lo) // 2
        catalog[j, 3] = float("nan")
        rows.append(5)  # user 5 has the NaN item in its history: masked, no NaN for it
        cols.append(j)
    perm = torch.randperm(len(rows), generator=g)
    rows, cols = torch.tensor(rows)[perm], torch.tensor(cols)[perm]
    return users, catalog, rows, cols

def same(a, b):  # exact equality, NaN equal to NaN, -0 equal to 0
    return a.shape == b.shape and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())

def close(a, b, tol=1e-5):
    return a.shape == b.shape and bool((((a.double() - b.double()).abs() <= tol * b.double().abs().clamp(min=1))
                                        | (a.double() == b.double()) | (torch.isnan(a) & torch.isnan(b))).all())

def col_failures(got, ref, chunk, lo, hi, sentinel, k):
    # columns where the tie rule leaves no choice must be chunk_top's; the others must hold their value
    bad = []
    for b in range(got.values.shape[0]):
        v, c, rv, rc = got.values[b], got.cols[b], ref.values[b], ref.cols[b]
        if torch.isnan(rv).any():
            continue
        kth = rv[k - 1]
        fixed = (rv > kth) if (ref.tie[b] > NEG_INF or kth == NEG_INF) else (rv > NEG_INF)
        if sorted(c[fixed].tolist()) != sorted(rc[fixed].tolist()):
            bad.append([b, "determined columns differ"])
            continue
        fin = v > NEG_INF
        if len(set(c[fin].tolist())) != int(fin.sum()) or not all(lo <= j < hi for j in c[fin].tolist()):
            bad.append([b, "finite entries not distinct chunk columns"])
        elif not torch.equal(chunk[b, c[fin] - lo], v[fin]):
            bad.append([b, "a column does not hold its value"])
        elif not all(j == sentinel or (lo <= j < hi and chunk[b, j - lo] == NEG_INF) for j in c[~fin].tolist()):
            bad.append([b, "a -inf entry is neither the sentinel nor a masked column"])
    return bad

def check(mod, case):
    B, V, D, lo, hi, group, k, seed, nan, integer = case
    mod.BLOCK_P, mod.BLOCK_M, mod.SCORE_GROUPS_TILES = 64, 64, (16, 4)  # fewer, larger programs: the interpreter's time goes by program
    users, catalog, rows, cols = make(*case)
    hist = mod.history_csr(rows, cols, B)
    eq = same if integer else close
    full = users.double() @ catalog.double().T  # (B, V) float64: exact for integer data
    masked = full.clone()
    masked[rows, cols] = NEG_INF
    out, fail = {}, []
    # group_max, both tile arithmetics, against the grouped max of the unmasked chunk
    w = hi - lo
    G = -(-w // group)
    pad = torch.cat([full[:, lo:hi], full.new_full((B, G * group - w), NEG_INF)], 1)
    want = pad.reshape(B, G, group).amax(dim=2).float()
    for explicit, tiles in ((False, (64, 1, 1, 4)), (False, (32, 2, 3, 4)), (True, (128, 1, 1, 4))):
        got = mod.group_max(users, catalog, lo, hi, group, explicit_fma=explicit, tiles=tiles)
        if not eq(got, want):
            fail.append(f"group_max explicit_fma={explicit} tiles={tiles}")
    # score_columns: random (row, column) pairs, padding columns, each row's own history columns
    g = torch.Generator().manual_seed(seed + 100)
    P, M = 2 * B, 37
    prow = torch.randint(0, B, (P,), generator=g)
    pcol = torch.randint(-3, V + 3, (P, M), generator=g)
    for p in range(0, P, 3):
        own = hist[0][hist[1][prow[p]]:hist[1][prow[p]] + hist[2][prow[p]]][:M // 2]
        pcol[p, :len(own)] = own
    inside = (pcol >= 0) & (pcol < V)
    want = torch.where(inside, masked[prow[:, None], pcol.clamp(0, V - 1)], NEG_INF).float()
    if not eq(mod.score_columns(users, catalog, prow, pcol, *hist), want):
        fail.append("score_columns")
    want = torch.where(inside, full[prow[:, None], pcol.clamp(0, V - 1)], NEG_INF).float()
    if not eq(mod.score_columns(users, catalog, prow, pcol), want):
        fail.append("score_columns without history")
    # score_groups: random (row, 3 groups), some a group of the row's own history; the last group partial
    G = -(-(hi - lo) // group)
    grow = torch.randint(0, B, (P,), generator=g)
    ggroups = torch.randint(0, G, (P, 3), generator=g)
    ggroups[::5, 1] = G - 1
    for p in range(0, P, 2):
        own = hist[0][hist[1][grow[p]]:hist[1][grow[p]] + hist[2][grow[p]]]
        own = own[(own >= lo) & (own < hi)]
        if len(own):
            ggroups[p, 0] = (own[p % len(own)] - lo) // group
    gcols = (lo + ggroups[:, :, None] * group + torch.arange(group)).reshape(P, -1)
    mod.SCORE_GROUPS = True  # score_groups' own kernel here; below, fused_chunk_top's calls go through
    for name, h, scores in (("score_groups", hist, masked), ("score_groups without history", (), full)):
        want = torch.where(gcols < hi, scores[grow[:, None], gcols.clamp(max=V - 1)], NEG_INF).float()
        if not eq(mod.score_groups(users, catalog, grow, ggroups, lo, hi, group, *h), want):
            fail.append(name)
    mod.SCORE_GROUPS = False  # score_columns (the same numbers; one program per pair is slow interpreted)
    tcol = torch.randint(-1, V + 1, (B,), generator=g)  # some outside [0, V)
    for b in range(1, B, 4):  # some in the user's own history (masked)
        if hist[2][b]:
            tcol[b] = hist[0][hist[1][b]]
    tin = (tcol >= 0) & (tcol < V)
    want = torch.where(tin, masked[torch.arange(B), tcol.clamp(0, V - 1)], NEG_INF).float()
    if not eq(mod.target_scores(users, catalog, tcol, *hist), want):
        fail.append("target_scores")
    # fused_chunk_top against chunk_top over the oracle's masked chunk (and without history)
    for name, h, scores in (("history", hist, masked), ("no history", None, full)):
        chunk = scores[:, lo:hi].float()
        ref = chunk_top(chunk if integer else scores[:, lo:hi], k, lo=lo, sentinel=V, group=group)
        got = mod.fused_chunk_top(users, catalog, lo, hi, k, h, V, group)
        if not eq(got.values, ref.values.float()):
            fail.append(f"fused {name}: values")
            continue
        if torch.isnan(got.values).any(1).tolist() != torch.isnan(chunk).any(1).tolist():
            fail.append(f"fused {name}: NaN rows")
        if integer:
            if not same(got.tie, ref.tie):
                fail.append(f"fused {name}: tie")
            bad = col_failures(got, ref, chunk, lo, hi, V, k)
            if bad:
                fail.append(f"fused {name}: cols {bad[:3]}")
            out[f"{name}_ties"] = int((ref.tie > NEG_INF).sum())
            order, rorder = canonical_order(got.values, got.cols), canonical_order(ref.values, ref.cols)
            out[f"{name}_rows_same_cols"] = int((got.cols.gather(1, order) == ref.cols.gather(1, rorder)).all(1).sum())
        out[f"{name}_nan_rows"] = int(torch.isnan(got.values).any(1).sum())
    out["fail"] = fail
    return out

result = {"cases": [check(eval_kernels, case) for case in cases], "mutants": {}}
for name, old, new in mutants:
    mod = load_mutant(module_path, old, new, name)
    if mod is None:
        result["mutants"][name] = "source text not found exactly once"
        continue
    caught = []
    for case in [cases[i] for i in mutant_cases]:
        try:
            caught += check(mod, case)["fail"]
        except Exception as err:  # a broken copy that crashes is caught too
            caught.append(f"raised {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
    result["mutants"][name] = caught
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted(CHECK, [CASES, MUTANTS, str(MODULE), MUTANT_CASES])


@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda i: "B%d-V%d-D%d-lo%d-hi%d-g%d-k%d" % CASES[i][:7]
                         + ("-nan" if CASES[i][8] else "") + ("" if CASES[i][9] else "-random"))
def test_kernels_match_the_float64_oracle_and_chunk_top(interpreted, index):
    result = interpreted["cases"][index]
    assert not result["fail"], f"{CASES[index]}: {result['fail']}"


def test_cases_exercise_ties_and_nan(interpreted):
    """The integer cases must hold rows with a tie across the k-th place (the tie flag is
    compared), and the NaN cases rows with a NaN (every user without history; not user 5, whose
    history holds the NaN item)."""
    cases = interpreted["cases"]
    assert sum(c.get("history_ties", 0) for c in cases) > 20, cases
    for case, c in zip(CASES, cases):
        if case[8]:
            assert 0 < c["history_nan_rows"] < case[0] and c["no history_nan_rows"] == case[0], (case, c)


def test_every_mutant_is_caught(interpreted):
    assert set(interpreted["mutants"]) == {m[0] for m in MUTANTS}
    not_applied = {name: r for name, r in interpreted["mutants"].items() if not isinstance(r, list)}
    assert not not_applied, not_applied
    escaped = [name for name, caught in interpreted["mutants"].items() if not caught]
    assert escaped == [], f"mutants that passed every check: {escaped}"


# --------------------------------------------------------------------------------------------
# On a GPU: compiled for CUDA, at the evaluation's shapes.

GPU_B, GPU_V, GPU_LO, GPU_HI, GPU_K = 4096, 50_000, 12_345, 45_000, 10  # 32,655 columns: the last group partial


def _gpu_data(d: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    users = torch.randn(GPU_B, d, generator=g).cuda()
    catalog = (torch.randn(GPU_V, d, generator=g) * 0.5).cuda()
    # ~20 history columns per user anywhere in the catalog, user 1 a long run inside the chunk
    rows = torch.arange(GPU_B).repeat_interleave(20)
    cols = torch.randint(0, GPU_V, (len(rows),), generator=g)
    long = torch.arange(GPU_LO + 100, min(GPU_HI, GPU_LO + 2100))
    rows, cols = torch.cat([rows, torch.full((len(long),), 1)]), torch.cat([cols, long])
    return users, catalog, rows.cuda(), cols.cuda()


def _group_maxima_of(scores: torch.Tensor, group: int) -> torch.Tensor:
    """Contiguous groups' maxima of (b, w) scores, the last group partial."""
    b, w = scores.shape
    n = -(-w // group)
    return torch.cat([scores, scores.new_full((b, n * group - w), float("-inf"))], 1).reshape(b, n, group).amax(2)


@pytest.mark.parametrize("d, explicit_fma, tiles", [
    (64, False, None), (100, False, None), (64, True, None), (100, True, None),
    (64, False, (64, 2, 4, 8)), (64, False, (128, 2, 2, 8)), (64, False, (32, 4, 4, 4))])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_group_max_is_bit_identical_to_score_columns_on_the_gpu(explicit_fma, d, tiles):
    """The contract: group_max's tile computes score_columns' number bit for bit (D = 100: two
    chained K_CHUNK dots). A failure with explicit_fma=False while True passes means tl.dot is not
    the FMA chain here: set DEFAULT_EXPLICIT_FMA = True."""
    from core import eval_kernels as ek

    users, catalog, _, _ = _gpu_data(d)
    m = ek.group_max(users, catalog, GPU_LO, GPU_HI, 64, explicit_fma=explicit_fma, tiles=tiles)
    w = GPU_HI - GPU_LO
    columns = torch.arange(GPU_LO, GPU_HI, device="cuda")
    bad, worst = 0, 0.0
    step = min(1024, GPU_B)  # (1024, w) at a time: 128 MiB of scores
    for s in range(0, GPU_B, step):
        rows = torch.arange(s, s + step, device="cuda")
        scores = ek.score_columns(users, catalog, rows, columns.expand(step, w))
        want = _group_maxima_of(scores, 64)
        bad += int((m[s:s + step] != want).sum())
        worst = max(worst, float((m[s:s + step] - want).abs().max()))
        if s == 0:  # and score_columns is the matmul's number up to rounding
            ref = users[rows].double() @ catalog[GPU_LO:GPU_HI].double().T
            err = float(((scores.double() - ref).abs() / ref.abs().clamp(min=1)).max())
            assert err < 1e-5, f"score_columns vs float64: {err:.3g}"
    print(f"group_max explicit_fma={explicit_fma} D={d} tiles={tiles}: {bad} of {m.numel()} maxima differ (max |diff| {worst:.3g})")
    assert bad == 0, f"explicit_fma={explicit_fma}, D={d}: {bad} of {m.numel()} group maxima differ, max {worst:.3g}"


@pytest.mark.parametrize("d", [64, 100])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_score_groups_is_bit_identical_to_score_columns_on_the_gpu(d, monkeypatch):
    """score_groups (the pairs sorted by group, a group's rows as one tile scored against
    several users by one tl.dot) gives score_columns' number bit for bit, history and the partial last
    group masked alike, and is timed against it."""
    from triton.testing import do_bench

    from core import eval_kernels as ek

    monkeypatch.setattr(ek, "SCORE_GROUPS", True)

    users, catalog, rows, cols = _gpu_data(d)
    hist = ek.history_csr(rows, cols, GPU_B)
    G = -(-(GPU_HI - GPU_LO) // 64)
    g = torch.Generator(device="cuda").manual_seed(1)
    groups = torch.randint(0, G, (GPU_B, 22), device="cuda", generator=g)
    groups[::7, 0] = G - 1  # the partial last group
    h_group = ((cols - GPU_LO) // 64).clamp(0, G - 1)
    groups[rows[::20], 1] = h_group[::20]  # a group holding one of the row's history items
    every = torch.arange(GPU_B, device="cuda")
    got = ek.score_groups(users, catalog, every, groups, GPU_LO, GPU_HI, 64, *hist)
    c = (GPU_LO + groups[:, :, None] * 64 + torch.arange(64, device="cuda")).reshape(GPU_B, -1)
    want = ek.score_columns(users, catalog, every, torch.where(c < GPU_HI, c, -1), *hist)
    same = (got == want) | (torch.isnan(got) & torch.isnan(want))
    masked = int((want == float("-inf")).sum())
    t_groups = do_bench(lambda: ek.score_groups(users, catalog, every, groups, GPU_LO, GPU_HI, 64, *hist))
    t_columns = do_bench(lambda: ek.score_columns(users, catalog, every, torch.where(c < GPU_HI, c, -1), *hist))
    print(f"score_groups D={d}: {int((~same).sum())} of {got.numel()} scores differ ({masked} masked); "
          f"{GPU_B} x 22 groups: score_groups {t_groups:.3f} ms, score_columns {t_columns:.3f} ms")
    assert masked > GPU_B // 20 and bool(same.all())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_chunk_top_matches_chunk_top_over_materialized_scores_on_the_gpu():
    """Against the streaming path's own chunk (cuBLAS fp32, history put to -inf, chunk_top): values
    within 1e-5 (another summation order), columns equal on rows without a near-tie in their top
    k + 1, and no host sync in the fused path (CUDA sync debug mode 'error')."""
    from core import eval_kernels as ek
    from core.metrics import canonical_order, chunk_top

    users, catalog, rows, cols = _gpu_data()
    hist = ek.history_csr(rows, cols, GPU_B)
    ek.fused_chunk_top(users, catalog, GPU_LO, GPU_HI, GPU_K, hist, GPU_V)  # compile outside the sync check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = ek.fused_chunk_top(users, catalog, GPU_LO, GPU_HI, GPU_K, hist, GPU_V)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        scores = users @ catalog[GPU_LO:GPU_HI].T
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    inside = (cols >= GPU_LO) & (cols < GPU_HI)
    scores[rows[inside], cols[inside] - GPU_LO] = float("-inf")
    ref = chunk_top(scores, GPU_K, lo=GPU_LO, sentinel=GPU_V, group=64)
    scale = ref.values[:, 0].abs().clamp(min=1)[:, None]
    assert bool(((got.values - ref.values).abs() <= 1e-5 * scale).all()), \
        float(((got.values - ref.values).abs() / scale).max())
    top = scores.topk(GPU_K + 1, dim=1).values  # a row is clean when its k + 1 best are well apart
    clean = ((top[:, :-1] - top[:, 1:]) > 1e-4 * scale).all(1)
    same = (got.cols.gather(1, canonical_order(got.values, got.cols))
            == ref.cols.gather(1, canonical_order(ref.values, ref.cols))).all(1)
    print(f"fused vs chunk_top: {int((~same).sum())} of {GPU_B} rows differ in cols, "
          f"{int((~same & clean).sum())} of {int(clean.sum())} clean rows; {int((ref.tie > float('-inf')).sum())} ties")
    assert int((~same & clean).sum()) == 0
    assert int(clean.sum()) > GPU_B // 2  # the check covers most rows
    t = ek.target_scores(users, catalog, cols[:GPU_B * 20:20].clone(), *hist)  # each user's first history item
    assert bool((t == float("-inf")).all())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_chunk_top_propagates_nan_on_the_gpu():
    """A NaN catalog row inside the chunk puts a NaN in every user's values, except a user whose
    history holds that row (masked, as _mask_chunk masks it); group_max reports NaN for its group."""
    from core import eval_kernels as ek

    users, catalog, rows, cols = _gpu_data()
    j = GPU_LO + 20_000
    catalog[j, 7] = float("nan")
    rows = torch.cat([rows, torch.tensor([3], device="cuda")])
    cols = torch.cat([cols, torch.tensor([j], device="cuda")])
    hist = ek.history_csr(rows, cols, GPU_B)
    for explicit in (False, True):
        m = ek.group_max(users, catalog, GPU_LO, GPU_HI, 64, explicit_fma=explicit)
        assert bool(torch.isnan(m[:, (j - GPU_LO) // 64]).all()) and int(torch.isnan(m).sum()) == GPU_B, explicit
    got = ek.fused_chunk_top(users, catalog, GPU_LO, GPU_HI, GPU_K, hist, GPU_V)
    nan_rows = torch.isnan(got.values).any(1)
    masked = torch.zeros(GPU_B, dtype=torch.bool, device="cuda")
    masked[rows[cols == j]] = True  # user 3, and any user whose random history drew j
    assert not bool(nan_rows[3]) and torch.equal(nan_rows, ~masked), int((nan_rows == masked).sum())
