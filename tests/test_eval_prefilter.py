"""``prefilter_chunk_top`` (core/eval_kernels.py): cheap approximate group maxima (by default
``group_max`` on TF32 tensor cores), a rigorous margin, the candidate groups rescored exactly, a
fixed number of uncertified rows redone exactly (``rescue``), and an overflow flag on the rest.

The contract: on every row NOT flagged as overflowing, the result is ``fused_chunk_top``'s (values
and tie flag bit for bit, columns up to the choice among tied items). On the CPU the kernels run
under the Triton interpreter (TRITON_INTERPRET=1 before Triton decorates them: one subprocess for
the module, ``CHECK``, printing JSON), as tests/test_eval_kernels.py does. Checks:
- ``CASES``: integer-valued data (every summation order gives the same exact sum) against the float64
  oracle's ``chunk_top`` and against ``fused_chunk_top`` itself; random floats against ``chunk_top``
  of ``score_columns`` over every column (bit for bit, the same arithmetic) and float64 within 1e-5.
  Users get planted near copies of their own vector (a clear top, which the prefilter certifies;
  integer copies tie a lot), 16 copies hidden in the history, or none (bulk only: most overflow).
  With and without history, several (lo, hi), chunk sizes, k in {1, 10}, D in {16, 64}; a small
  range (G <= C: the exact path), a NaN catalog row, a NaN user (must overflow), a user whose
  history leaves one live group (fewer than k + 1: tau = -inf, certified all the same). Each case
  again with ``rescue`` = 4 (case 3 also = B): the same checks, and exactly min(rescue, flagged) fewer rows flagged.
- ``structured``: D = 16, user b = s * e_p (p = b % 4, s = 1 + b // 4), catalog columns whose
  pattern scores are set by hand and whose norms all equal R, eps = 10 / R: margin = 10 s.
  Patterns: 0 separated tops, 1 decoys packed just below the top, 2 decoys well below, 3 the
  (C + 1)-th upper bound between the (k + 1)-th and the k-th lower bound (k = 1, C = 4).
  * adversarial ``approx``: the exact score moved by 0.99 of the allowed bound, the user's top
    k + 1 down and everything else up. The real margin survives it (pattern 1 overflows, 0 and 2
    are certified and right); with eps = 0 (a deliberately broken variant) a certified row is wrong.
  * exact ``approx``: the overflow flag row by row (1 and 3 overflow, 0 and 2 do not, a NaN user does).
- ``margin``: the bf16 ``approx`` (``bf16_scores``, the derivation's general case) against ``score_columns`` on random, integer and a
  near-worst-case construction (bf16 inputs all rounded down by 2^-8 relative, parallel vectors,
  the output rounded down by 2^-8 too): |approx - exact| <= beta(D) |u| |c| = eps / 2 |u| |c|
  (the derivation without its safety factor; ratio <= 0.5), and the construction reaches >= 0.45.
- ``MUTANTS``: one-line broken copies of core/eval_kernels.py, each caught by the checks named.
On a GPU (``-m gpu``): no host sync (the rescue included), certified rows against fused_chunk_top
at the evaluation's batch, the TF32 group maxima and cuBLAS's bf16 GEMM each within half their
margin, the overflow fractions printed.

Note (see the report): tau from the k-th instead of the (k + 1)-th lower bound changes no
certified output (every item >= the k-th value still lies in a candidate group, and the (k + 1)-th
value matters only when it equals the k-th), only the overflow flag: the check that catches it
pins the flag on pattern 3.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.child_env import run_interpreted

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "core" / "eval_kernels.py"

# (B, V, D, lo, hi, group, k, seed, integer, chunk_size, nan)
CASES = [
    (64, 3000, 64, 37, 2990, 16, 10, 0, True, 512, False),  # 6 chunks, the last partial; a NaN user (row 9)
    (64, 3000, 16, 0, 3000, 16, 1, 1, True, 1024, False),  # k = 1
    (48, 2000, 16, 100, 1900, 32, 10, 2, False, 65536, False),  # random floats, one chunk
    (48, 1500, 64, 11, 1490, 16, 1, 3, False, 700, False),  # chunk_size rounded down to whole groups
    (40, 600, 16, 150, 400, 16, 10, 4, True, 512, False),  # 16 groups <= C = 22: the exact path
    (40, 1500, 16, 5, 1500, 16, 10, 5, True, 512, True),  # a NaN catalog row: every row overflows
    (32, 800, 16, 0, 800, 16, 1, 6, True, 256, False),  # row 3: 6 live columns in one group (tau = -inf)
]
MUTANT_CASES = [0, 3, 6]  # the equality checks' cases that run every mutant too (3: many rows rescued)

# (name, exact source text, replacement, the checks that must catch it (prefixes of failure names))
MUTANTS = [
    ("eps_zero",  # no margin: the approximate ranking trusted as exact
     "margin = eps * un * gn + 2.0 ** -122", "margin = 0 * un * gn + 2.0 ** -122", ["adversarial", "overflow"]),
    ("tau_from_kth_lower_bound",  # certified outputs unchanged (module docstring); only the flag moves
     "tau = lb.topk(k + 1, dim=1).values[:, k]", "tau = lb.topk(k + 1, dim=1).values[:, k - 1]", ["overflow"]),
    ("overflow_check_off",
     "result = ChunkTop(top[:, :k], torch.where(picked < hi, picked, sentinel), tie)",
     "result, overflow = ChunkTop(top[:, :k], torch.where(picked < hi, picked, sentinel), tie), overflow & False",
     ["adversarial", "overflow"]),
    ("candidates_rescored_without_history",
     "*hist_args)  # the candidates, history at -inf", ")  # the candidates, history at -inf",
     ["case0 history", "adversarial", "overflow"]),
    ("poisoned_groups_not_repaired",  # group maxima (so tau) may be history items
     "_repair_poisoned(gmax, users, catalog, lo, hi, group, hist, _pair_rows(hist, B))", "pass",
     ["case0 history"]),
    ("rescued_rows_still_flagged",
     "return ChunkTop(values, cols, tie), overflow & ~done", "return ChunkTop(values, cols, tie), overflow",
     ["case3 rescue"]),
    ("rescued_rows_misplaced",  # row i's exact result written to another picked row
     "values[pick] = torch.where(redo[:, None], exact.values, values[pick])",
     "values[pick] = torch.where(redo[:, None], exact.values.roll(1, 0), values[pick])", ["case3 rescue"]),
    ("rescue_without_history",
     "sub_hist = (hist[0], start[pick], count[pick])", "sub_hist = None", ["case3 rescue"]),
    ("nan_rows_not_flagged",
     "| gmax.isnan().any(dim=1) | margin.isnan().any(dim=1)", "", ["overflow"]),
    ("left_out_minus_inf_overflows",  # a row with at most k live groups flagged (tau = -inf = the left-out ub)
     "overflow = ((out >= tau) & (out > NEG_INF))", "overflow = (out >= tau)", ["case6 history"]),
    ("bf16_unit_roundoff_2^-9",  # the brief's 2^-9: eps halved, the safety factor gone
     "def prefilter_eps(d: int, r: float = 2.0 ** -8,", "def prefilter_eps(d: int, r: float = 2.0 ** -9,", ["margin"]),
]

CHECK = r"""
import json, sys
import torch
from core import eval_kernels
from core.metrics import NEG_INF, chunk_top
from tests.mutants import load_mutant

cases, mutants, module_path, mutant_cases = json.loads(sys.argv[1])
RESCUE = 4  # rows the rescue redoes (fewer than most cases' overflow rows: some stay flagged)

def make(B, V, D, lo, hi, group, k, seed, integer, chunk, nan):
    g = torch.Generator().manual_seed(seed)
    if integer:
        users = torch.randint(-3, 4, (B, D), generator=g).float()
        catalog = torch.randint(-3, 4, (V, D), generator=g).float()
    else:
        users, catalog = torch.randn(B, D, generator=g), torch.randn(V, D, generator=g)
    rows, cols = [], []
    for b in range(B):
        kind = b % 3  # 0: k + 1 + b % 4 near copies (a clear top), 1: 16 copies all in the history, 2: none
        at = torch.randint(lo, hi, ((k + 1 + b % 4, 16, 0)[kind],), generator=g).tolist()
        for j in at:
            if integer:  # the user's vector, one coordinate moved by -1, 0 or 1: ties
                catalog[j] = users[b]
                catalog[j, int(torch.randint(0, D, (1,), generator=g))] += float(torch.randint(-1, 2, (1,), generator=g))
            else:
                catalog[j] = 2 * users[b] + 0.05 * torch.randn(D, generator=g)
        items = at if kind == 1 else []
        if kind == 0 and at:  # a copy in the history beside a planted one: in a candidate group, masked
            j = at[0] + 1 if (at[0] - lo) % group != group - 1 and at[0] + 1 < hi else at[0] - 1
            catalog[j] = catalog[at[0]]
            items.append(j)
        if b % 7:
            items += torch.randint(0, V, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        if b == 3 and hi - lo <= 1000:  # all but 6 columns of group 7: fewer than k + 1 live groups
            items += [j for j in range(lo, hi) if not lo + 7 * group + 10 <= j < lo + 8 * group]
        if b == 2:  # a long run (whole groups masked), duplicates, pairs outside [lo, hi)
            items += list(range(lo, min(hi, lo + 3 * group))) + [lo + 5, lo + 5, 0, V - 1]
        rows += [b] * len(items)
        cols += items
    if nan:
        j = lo + (hi - lo) // 2
        catalog[j, 3] = float("nan")
        rows.append(5)
        cols.append(j)
    if B > 9 and seed == 0:
        users[9, 1] = float("nan")  # a kind-0 row, certified otherwise
    perm = torch.randperm(len(rows), generator=g)
    return users, catalog, torch.tensor(rows, dtype=torch.int64)[perm], torch.tensor(cols, dtype=torch.int64)[perm]

def same(a, b):  # exact equality, NaN equal to NaN
    return a.shape == b.shape and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())

def row_failures(got, ovf, ref, chunk, lo, hi, sentinel, k):
    # rows not flagged must be ref's: values and tie bit for bit, the columns the tie rule fixes
    # equal, every finite entry a distinct chunk column holding its value, -inf entries sentinel
    # or masked columns (tests/test_eval_kernels.py's rule)
    bad = []
    for b in (~ovf).nonzero().flatten().tolist():
        v, c, rv, rc = got.values[b], got.cols[b], ref.values[b], ref.cols[b]
        if not same(v, rv) or not same(got.tie[b:b + 1], ref.tie[b:b + 1]):
            bad.append([b, "values or tie"])
            continue
        if torch.isnan(rv).any():
            continue
        kth = rv[k - 1]
        fixed = (rv > kth) if (ref.tie[b] > NEG_INF or kth == NEG_INF) else (rv > NEG_INF)
        fin = v > NEG_INF
        if sorted(c[fixed].tolist()) != sorted(rc[fixed].tolist()):
            bad.append([b, "determined columns"])
        elif len(set(c[fin].tolist())) != int(fin.sum()) or not all(lo <= j < hi for j in c[fin].tolist()):
            bad.append([b, "finite entries not distinct chunk columns"])
        elif not torch.equal(chunk[b, c[fin] - lo], v[fin]):
            bad.append([b, "a column does not hold its value"])
        elif not all(j == sentinel or (lo <= j < hi and chunk[b, j - lo] == NEG_INF) for j in c[~fin].tolist()):
            bad.append([b, "a -inf entry neither the sentinel nor masked"])
    return bad

def check_case(mod, index, case, base):
    B, V, D, lo, hi, group, k, seed, integer, chunk, nan = case
    mod.BLOCK_P, mod.BLOCK_M = 64, 64  # fewer, larger programs: the interpreter's time goes by program
    mod.SCORE_GROUPS = False  # score_groups through score_columns: the same numbers (tests/test_eval_kernels.py), faster here
    users, catalog, rows, cols = make(*case)
    hist = mod.history_csr(rows, cols, B)
    full = users.double() @ catalog.double().T
    masked = full.clone()
    masked[rows, cols] = NEG_INF
    out, fail = {}, []
    for name, h, scores in (("history", hist, masked), ("no history", None, full)):
        tag = f"case{index} {name}"
        got, ovf = mod.prefilter_chunk_top(users, catalog, lo, hi, k, h, V, group, chunk_size=chunk)
        key = (index, name)
        if integer:
            chunk_ = scores[:, lo:hi].float()
        else:  # the exact arithmetic over every column (computed once, by the unmutated module)
            if key not in base:
                every = torch.arange(lo, hi).expand(B, hi - lo)
                base[key] = eval_kernels.score_columns(users, catalog, torch.arange(B), every, *(h or ()))
            chunk_ = base[key]
        ref = chunk_top(chunk_, k, lo=lo, sentinel=V, group=group)
        bad = row_failures(got, ovf, ref, chunk_, lo, hi, V, k)
        if bad:
            fail.append(f"{tag}: vs chunk_top {bad[:3]}")
        if mod is eval_kernels and integer:  # and fused_chunk_top itself
            fz = mod.fused_chunk_top(users, catalog, lo, hi, k, h, V, group)
            bad = row_failures(got, ovf, fz, chunk_, lo, hi, V, k)
            if bad:
                fail.append(f"{tag}: vs fused_chunk_top {bad[:3]}")
        if not integer:  # float64 within 1e-5 (order statistics move no more than the scores)
            r64 = chunk_top(scores[:, lo:hi], k, lo=lo, sentinel=V, group=group).values
            v, keep = got.values.double(), ~ovf
            tol = 1e-5 * r64[:, :1].abs().clamp(min=1)
            okv = ((v - r64).abs() <= tol) | (v == r64)
            if not bool(okv[keep].all()):
                fail.append(f"{tag}: float64")
        if not bool(ovf[~torch.isfinite(users).all(1)].all()):
            fail.append(f"{tag}: a non-finite user not flagged")
        if nan and not bool(ovf[torch.isnan(ref.values).any(1)].all()):
            fail.append(f"{tag}: a NaN row not flagged")
        if h is not None and hi - lo <= 1000 and bool(ovf[3]):
            fail.append(f"{tag}: row 3 (one live group) flagged")
        # the rescue: RESCUE of the flagged rows redone exactly, their flags cleared, the rest kept
        # (case 3 also with all B rows' budget: every flagged row redone, kind-1 tops hidden in histories)
        for r in (RESCUE, B) if index == 3 else (RESCUE,):
            got_r, ovf_r = mod.prefilter_chunk_top(users, catalog, lo, hi, k, h, V, group, chunk_size=chunk, rescue=r)
            rtag = f"case{index} rescue {name}"
            bad = row_failures(got_r, ovf_r, ref, chunk_, lo, hi, V, k)
            if bad:
                fail.append(f"{rtag}: {r} rows vs chunk_top {bad[:3]}")
            if int(ovf_r.sum()) != max(0, int(ovf.sum()) - r) or bool((ovf_r & ~ovf).any()):
                fail.append(f"{rtag}: {int(ovf_r.sum())} rows flagged after a rescue of {r}, {int(ovf.sum())} before")
        out[f"{name}_rescued"] = int(ovf.sum()) - max(0, int(ovf.sum()) - RESCUE)
        out[f"{name}_certified"] = int((~ovf).sum())
        out[f"{name}_certified_ties"] = int(((ref.tie > NEG_INF) & ~ovf).sum())
        out[f"{name}_overflow_kinds"] = [int(ovf[torch.arange(B) % 3 == i].sum()) for i in range(3)]
    out["fail"] = fail
    return out

def structured():
    # D = 16; user b = s e_p (p = b % 4, s = 1 + b // 4); catalog dims 0..3 the patterns' scores, dim 15
    # pads every norm to R; one hand-set item per group per pattern, the rest background in [-400, 0]
    g = torch.Generator().manual_seed(7)
    V, D, R, group = 1600, 16, 2048.0, 16
    S = torch.randint(-400, 1, (V, 4), generator=g).double()
    tops = {0: [1000, 990, 980, 1010], 1: [1000, 1000] + list(range(990, 999)),
            2: [1000, 1000] + list(range(950, 959)), 3: [1000, 985, 975, 975, 975]}
    where = {}
    for p, vals in tops.items():
        gs = torch.randperm(V // group, generator=g)[:len(vals)]
        where[p] = (gs * group + torch.randint(0, group, (len(vals),), generator=g)).tolist()
    where[0][3] = where[0][1] - where[0][1] % group + (where[0][1] + 1) % group  # 1010 beside 990: history
    for p, vals in tops.items():
        S[where[p], p] = torch.tensor(vals, dtype=torch.float64)
    catalog = torch.zeros(V, D, dtype=torch.float64)
    catalog[:, :4] = S
    catalog[:, 15] = (R * R - (S * S).sum(1)).sqrt()
    B = 20
    users = torch.zeros(B, D)
    for b in range(B):
        users[b, b % 4] = 1 + b // 4
    rows = [0, 4, 8, 12, 16, 4, 12]  # pattern 0: 1010 (beside 990) in every history, 1000 in two
    cols = [where[0][3]] * 5 + [where[0][0]] * 2
    return users, catalog.float(), torch.tensor(rows), torch.tensor(cols), R, 1  # k = 1

def exact_approx(users, rows):
    return (users.double() @ rows.double().T).float()

def structured_run(mod, users, catalog, rows, cols, eps, approx, k):
    B, V = users.shape[0], catalog.shape[0]
    hist = mod.history_csr(rows, cols, B)
    got, ovf = mod.prefilter_chunk_top(users, catalog, 0, V, k, hist, V, 16, chunk_size=512, eps=eps, approx=approx)
    scores = users.double() @ catalog.double().T
    scores[rows, cols] = NEG_INF
    chunk_ = scores.float()
    ref = chunk_top(chunk_, k, lo=0, sentinel=V, group=16)
    return got, ovf, row_failures(got, ovf, ref, chunk_, 0, V, V, k), scores

def check_adversarial(mod):
    users, catalog, rows, cols, R, k = structured()
    eps = 10 / R
    scores = users.double() @ catalog.double().T
    scores[rows, cols] = NEG_INF
    thr = scores.topk(k + 1, dim=1).values[:, k:k + 1]  # the (k + 1)-th best exact score

    def adversary(u, c):  # exact, the top k + 1 down and the rest up by 0.99 of the allowed bound
        e = u.double() @ c.double().T
        m = 0.99 * eps * u.double().norm(dim=1)[:, None] * c.double().norm(dim=1)
        return (e + torch.where(e >= thr, -m, m)).float()

    out, fail = {}, []
    pattern = torch.arange(users.shape[0]) % 4
    for name, e in (("real", eps), ("eps0", 0.0)):
        got, ovf, bad, _ = structured_run(mod, users, catalog, rows, cols, e, adversary, k)
        out[name] = {"wrong_certified": len(bad), "overflow": ovf.tolist()}
        if name == "real":
            if bad:
                fail.append(f"adversarial: a certified row wrong {bad[:3]}")
            if not bool(ovf[pattern == 1].all()) or bool(ovf[(pattern == 0) | (pattern == 2)].any()):
                fail.append(f"adversarial: overflow {ovf.int().tolist()}")
    out["fail"] = fail
    return out

def check_overflow(mod):
    users, catalog, rows, cols, R, k = structured()
    users[16, 7] = float("nan")  # a pattern-0 row: certified but for the NaN
    got, ovf, bad, _ = structured_run(mod, users, catalog, rows, cols, 10 / R, exact_approx, k)
    pattern = torch.arange(users.shape[0]) % 4
    want = (pattern == 1) | (pattern == 3)
    want[16] = True
    fail = []
    if bad:
        fail.append(f"overflow: a certified row wrong {bad[:3]}")
    if not torch.equal(ovf, want):
        fail.append(f"overflow: flags {ovf.int().tolist()} want {want.int().tolist()}")
    return {"fail": fail, "overflow": ovf.tolist()}

def margin_data(base):
    if "margin" in base:
        return base["margin"]
    g = torch.Generator().manual_seed(11)
    sets = {"randn D16": (torch.randn(32, 16, generator=g), torch.randn(1000, 16, generator=g)),
            "randn D64": (torch.randn(32, 64, generator=g) * 3, torch.randn(1000, 64, generator=g) * 0.5),
            "integer D64": (torch.randint(-30, 31, (32, 64), generator=g).float(),
                            torch.randint(-30, 31, (1000, 64), generator=g).float())}
    # near worst case: every input 2^e (1 + 2^-8 - 2^-16) (bf16 rounds it down by ~2^-8 relative),
    # c parallel to u (Cauchy-Schwarz tight), sum of the bf16 products 16 + 3/64 + 3/256 + 3/1024, just
    # under the midpoint 16 + 1/16: the bf16 output rounds down by ~2^-8 relative too
    w = torch.tensor([1.0] * 16 + [1 / 8] * 3 + [1 / 16] * 3 + [1 / 32] * 3, dtype=torch.float64) * (1 + 2 ** -8 - 2 ** -16)
    sign = torch.where(torch.rand(4, 25, generator=g) < 0.5, -1.0, 1.0).double()
    u = (w * sign).float()
    sets["worst case"] = (u, torch.cat([u, (u.double() * 1.0001).float(), -u]))
    base["margin"] = {n: (u, c, eval_kernels.score_columns(u, c, torch.arange(len(u)), torch.arange(len(c)).expand(len(u), len(c))))
                      for n, (u, c) in sets.items()}
    return base["margin"]

def check_margin(mod, base):
    out, fail = {}, []
    for name, (u, c, exact) in margin_data(base).items():
        a = mod.bf16_scores(u, c).float()
        bound = mod.prefilter_eps(u.shape[1]) * u.double().norm(dim=1)[:, None] * c.double().norm(dim=1)
        ratio = float(((a.double() - exact.double()).abs() / bound).max())
        out[name] = ratio
        if not ratio <= 0.5:  # beta(D) |u| |c| = eps / 2 |u| |c|: the derivation, its safety factor unused
            fail.append(f"margin: {name} ratio {ratio:.4f} > 0.5")
    if not out["worst case"] >= 0.45:
        fail.append(f"margin: the worst case reaches only {out['worst case']:.4f}")
    out["fail"] = fail
    return out

def run_all(mod, case_indices, base):
    res = {f"case{i}": check_case(mod, i, cases[i], base) for i in case_indices}
    res["adversarial"] = check_adversarial(mod)
    res["overflow"] = check_overflow(mod)
    res["margin"] = check_margin(mod, base)
    return res

base = {}
result = {"base": run_all(eval_kernels, range(len(cases)), base), "mutants": {}}
for name, old, new in mutants:
    mod = load_mutant(module_path, old, new, name)
    if mod is None:
        result["mutants"][name] = "source text not found exactly once"
        continue
    try:
        caught = [f for r in run_all(mod, mutant_cases, base).values() for f in r["fail"]]
    except Exception as err:
        caught = [f"raised {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"]
    result["mutants"][name] = caught
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted(CHECK, [CASES, [m[:3] for m in MUTANTS], str(MODULE), MUTANT_CASES])


@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda i: "B%d-V%d-D%d-lo%d-hi%d-g%d-k%d" % CASES[i][:7]
                         + ("-int" if CASES[i][8] else "-random") + ("-nan" if CASES[i][10] else ""))
def test_certified_rows_match_fused_chunk_top_and_the_oracle(interpreted, index):
    """Rows not flagged: fused_chunk_top's / chunk_top's values and tie bit for bit, columns by the
    tie rule; float64 within 1e-5 on random data; non-finite users and NaN rows flagged."""
    result = interpreted["base"][f"case{index}"]
    assert not result["fail"], f"{CASES[index]}: {result['fail']}"


def test_cases_certify_rows_and_ties(interpreted):
    """The equality checks must not be vacuous: the planted rows (kind 0) are certified, ties on
    certified rows occur, the small range (exact path) flags nothing, a NaN catalog row flags all."""
    cases = interpreted["base"]
    for i, case in enumerate(CASES):
        c, B = cases[f"case{i}"], case[0]
        if case[10]:
            assert c["history_certified"] == 0, c
        elif i == 4:
            assert c["history_certified"] == B and c["no history_certified"] == B, c
        else:
            assert c["history_certified"] >= B // 4 and c["no history_certified"] >= B // 4, (case, c)
    assert sum(c.get("history_certified_ties", 0) + c.get("no history_certified_ties", 0) for c in cases.values()) > 20
    rescued = [c.get(f"{h}_rescued", 0) for c in cases.values() for h in ("history", "no history")]
    assert sum(rescued) > 0 and max(rescued) == 4, rescued  # the rescue ran, and some rows outlived it


def test_adversarial_approx_is_survived_by_the_margin(interpreted):
    """An approx off by 0.99 of the bound in the worst direction: certified rows right, the decoy
    pattern overflows, the separated ones are certified."""
    result = interpreted["base"]["adversarial"]
    assert not result["fail"], result
    assert result["real"]["wrong_certified"] == 0


def test_adversarial_approx_breaks_margin_zero(interpreted):
    """The deliberately broken variant (eps = 0) must give a wrong result on a row it certifies:
    otherwise the adversarial check proves nothing."""
    result = interpreted["base"]["adversarial"]["eps0"]
    assert result["wrong_certified"] > 0, result


def test_overflow_flags(interpreted):
    """Exact approx, margin 10 s: packed decoys and the (C + 1)-th upper bound at or above the
    (k + 1)-th lower bound overflow, separated tops do not, a NaN user does."""
    result = interpreted["base"]["overflow"]
    assert not result["fail"], result


def test_default_bf16_approx_stays_within_the_margin(interpreted):
    """|bf16 GEMM - score_columns| <= beta(D) |u| |c| (half the margin), and the near-worst-case
    construction comes within 10% of it."""
    result = interpreted["base"]["margin"]
    print({k: v for k, v in result.items() if k != "fail"})
    assert not result["fail"], result


def test_every_mutant_is_caught(interpreted):
    mutants = interpreted["mutants"]
    assert set(mutants) == {m[0] for m in MUTANTS}
    not_applied = {name: r for name, r in mutants.items() if not isinstance(r, list)}
    assert not not_applied, not_applied
    missed = {name: (want, mutants[name]) for name, _, _, want in MUTANTS
              if not all(any(f.startswith(w) for f in mutants[name]) for w in want)}
    assert not missed, f"mutants not caught by the checks named: {missed}"


# --------------------------------------------------------------------------------------------
# On a GPU: compiled for CUDA, at the evaluation's batch (tests/test_eval_kernels.py's data).


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_prefilter_on_the_gpu():
    """No host sync (CUDA sync debug mode 'error'), the rescue included; certified rows equal
    fused_chunk_top's values and tie flag bit for bit (on the GPU fused_chunk_top is exact: its
    bit-identity test), most rows certified; the TF32 group maxima within half their margin of the
    exact ones, and cuBLAS's bf16 GEMM within half its margin; the overflow fractions printed."""
    from core import eval_kernels as ek
    from tests.test_eval_kernels import GPU_B, GPU_HI, GPU_K, GPU_LO, GPU_V, _gpu_data

    users, catalog, rows, cols = _gpu_data()
    hist = ek.history_csr(rows, cols, GPU_B)
    args = (users, catalog, GPU_LO, GPU_HI, GPU_K, hist, GPU_V)
    ek.prefilter_chunk_top(*args, rescue=128)  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got, ovf = ek.prefilter_chunk_top(*args, rescue=128)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = ek.fused_chunk_top(*args)
    plain, ovf0 = ek.prefilter_chunk_top(*args)
    fractions = {c: float(ek.prefilter_chunk_top(*args, candidates=c)[1].float().mean())
                 for c in (2 * (GPU_K + 1), 4 * (GPU_K + 1))}
    print(f"prefilter (TF32 group maxima): overflow fraction by candidates {fractions}; rows flagged "
          f"{int(ovf0.sum())} -> {int(ovf.sum())} after rescuing 128")
    assert int(ovf.sum()) == max(0, int(ovf0.sum()) - 128)
    for top, flags in ((got, ovf), (plain, ovf0)):
        keep = ~flags
        assert int(keep.sum()) > GPU_B // 2, fractions
        assert torch.equal(top.values[keep], ref.values[keep]) and torch.equal(top.tie[keep], ref.tie[keep])
    # the TF32 maxima against the exact ones, per group: within beta(D) |u| max |c| (half the margin)
    exact = ek.group_max(users, catalog, GPU_LO, GPU_HI)
    approx = ek.group_max(users, catalog, GPU_LO, GPU_HI, precision="tf32")
    cn = catalog[GPU_LO:GPU_HI].double().norm(dim=1)
    G = exact.shape[1]
    gn = torch.cat([cn, cn.new_zeros(G * 64 - len(cn))]).reshape(G, 64).amax(dim=1)
    bound = ek.prefilter_eps(users.shape[1], **ek.TF32_EPS_ARGS) * users.double().norm(dim=1)[:, None] * gn
    ratio = float(((approx.double() - exact.double()).abs() / bound).max())
    print(f"tf32 group maxima: max |approx - exact| / margin = {ratio:.4f}")
    assert 0 < ratio <= 0.5  # 0: the kernel did not use TF32 at all
    n = 4096
    approx = ek.bf16_scores(users[:512], catalog[GPU_LO:GPU_LO + n]).float()
    exact = ek.score_columns(users, catalog, torch.arange(512, device="cuda"),
                             torch.arange(GPU_LO, GPU_LO + n, device="cuda").expand(512, n))
    bound = ek.prefilter_eps(users.shape[1]) * users[:512].double().norm(dim=1)[:, None] \
        * catalog[GPU_LO:GPU_LO + n].double().norm(dim=1)
    ratio = float(((approx.double() - exact.double()).abs() / bound).max())
    print(f"bf16 GEMM: max |approx - exact| / margin = {ratio:.4f}")
    assert ratio <= 0.5
