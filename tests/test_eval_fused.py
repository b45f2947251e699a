"""The streaming evaluation through the fused kernels (core/eval_kernels.py, ``ModelChunks.fused``)
gives the metrics of the matmul + ``chunk_top`` path.

On the CPU the kernels run under the Triton interpreter (a subprocess: TRITON_INTERPRET=1 must be
set before Triton decorates them). Users and items are integer-valued vectors, so every score is
exact whatever the order of its sum and both paths see the very same scores; with so many exact
ties the tie fix-up (``finish_top``'s rescan of the rows ``needs_exact`` names) runs too. Equal
metrics (HitRate, NDCG, MRR, Coverage, Surprisal) then mean equal ranks and equal top-k sets.
Broken variants of the integration (``MUTANTS``) must change the metrics. The kernels' own
float64 and bit-identity checks are tests/test_eval_kernels.py's; the GPU case here runs a real
model both ways (``-m gpu``).
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
EVALUATION = REPO / "core" / "evaluation.py"
MUTANTS = [
    ("rescan_without_history",  # the tie fix-up's rows scored with history items unmasked
     "score_columns(users, catalog, rows, cols, *hist_args)", "score_columns(users, catalog, rows, cols)"),
    ("target_column_off_by_one",  # the target's score read one column over
     "        t_col = targets.to(device=device, dtype=torch.int64) - 1\n        t_col = t_col if",
     "        t_col = targets.to(device=device, dtype=torch.int64)\n        t_col = t_col if"),
    ("subset_history_of_other_users",  # the rescanned rows' targets masked with the first users' lists
     "scored = torch.arange(n_users, device=device) if rows is None else rows",
     "scored = torch.arange(n_users, device=device) if rows is None else torch.arange(len(rows), device=device)"),
    ("kernel_order_kept",  # equal scores left in topk's order, not the tie rule's (lower item first)
     "return merge_top(CatalogTop.empty(size, k, n_items=n_items, device=device), part)  # the tie rule's order",
     "return part"),
    ("prefilter_overflow_kept",  # rows the margin could not certify kept as they are, not rescanned
     "tie = torch.where(overflow, float(\"inf\"), tie)", "tie = tie"),
    ("prefilter_overflow_values_kept",  # overflow rows marked by their tie only: needs_exact misses them
     "values = torch.where(overflow[:, None], float(\"inf\"), values)", "values = values"),
]

CHECK = r"""
import json, sys
import torch
from core import evaluation
from core.data.batching import DeviceSequences
from core.data.shards import SequenceData
from core.data.synthetic import PRESETS, generate
from core.evaluation import count_train_users, rank_split
from core import eval_kernels
import importlib.util, tempfile
eval_kernels.SCORE_GROUPS = False  # score_groups through score_columns: the same numbers (test_eval_kernels), faster interpreted
from pathlib import Path

def load_mutant(path, old, new, name):
    # as tests/mutants.py, but registered in sys.modules (evaluation's dataclasses look it up)
    source = Path(path).read_text()
    if source.count(old) != 1:
        return None
    file = Path(tempfile.mkdtemp()) / f"mutant_{name}.py"
    file.write_text(source.replace(old, new))
    spec = importlib.util.spec_from_file_location(f"mutant_{name}", file)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

mutants, path = json.loads(sys.argv[1])

def case(n_items):
    params = {**PRESETS["tiny"], "n_users": 90, "n_items": n_items}
    offsets, items = generate(**params, seed=5)
    data = SequenceData(offsets=offsets, items=items, n_users=90, n_items=n_items, attrs={})
    g = torch.Generator().manual_seed(0)
    table = torch.randint(-2, 3, (n_items + 1, 16), generator=g).float()  # a user is the vector of its last item
    catalog = torch.randint(-1, 2, (n_items, 16), generator=g).float()
    return data, DeviceSequences.from_data(data, "cpu"), table, catalog

SMALL, LARGE = case(130), case(600)  # LARGE: 38 groups of 16, more than the prefilter's candidates

def run(module, fused, mask_history=True, split="test", prefilter=False, data=SMALL):
    data, seqs, table, catalog = data
    module.FUSED, module.PREFILTER, module.PREFILTER_CANDIDATES = fused and not prefilter, prefilter, 11
    module.PREFILTER_MIN_ITEMS = 0  # the small test catalogs too
    module.PREFILTER_RESCUE = 2  # a batch's first 2 overflow rows redone in place, the rest by the fix-up
    scan = module._scan_fused
    ran = []
    module._scan_fused = lambda *a, **kw: ran.append(kw["rows"] is not None) or scan(*a, **kw)
    score_fn = lambda inputs: module.ModelChunks(table[inputs[:, -1]].contiguous(), catalog)
    try:
        out = module.rank_split(score_fn, seqs, split=split, batch_size=32, max_len=20, mask_history=mask_history,
                                ks=(1, 5, 10), item_user_counts=data.train_item_user_counts(),
                                n_train_users=count_train_users(data), chunk_size=29 if not prefilter else 96,
                                group_size=16)
    finally:
        module._scan_fused = scan
    return out, ran

res = {"cases": {}}
for split in ("valid", "test"):
    for mask in (True, False):
        plain, _ = run(evaluation, False, mask, split)
        fused, ran = run(evaluation, True, mask, split)
        res["cases"][f"{split}_{mask}"] = {"equal": plain == fused, "fused_batches": ran.count(False),
                                           "rescans": ran.count(True), "plain": plain, "fused": fused}
        plain, _ = run(evaluation, False, mask, split, data=LARGE)
        pre, ran = run(evaluation, True, mask, split, prefilter=True, data=LARGE)
        res["cases"][f"prefilter_{split}_{mask}"] = {"equal": plain == pre, "fused_batches": ran.count(False),
                                                     "rescans": ran.count(True), "plain": plain, "fused": pre}
res["mutants"] = {}
plain, _ = run(evaluation, False)
plain_large, _ = run(evaluation, False, data=LARGE)
for name, old, new in mutants:
    module = load_mutant(path, old, new, name)
    if module is None:
        res["mutants"][name] = "source text not found exactly once"
        continue
    if name.startswith("prefilter_"):
        res["mutants"][name] = run(module, True, prefilter=True, data=LARGE)[0] != plain_large
    else:
        res["mutants"][name] = run(module, True)[0] != plain
print(json.dumps(res))
"""


def test_fused_scan_equals_the_matmul_path_and_mutants_are_caught():
    out = subprocess.run([sys.executable, "-c", CHECK, json.dumps([MUTANTS, str(EVALUATION)])], cwd=REPO,
                         env=child_env(TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=INTERPRETED_TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for name, case in res["cases"].items():
        assert case["equal"], (name, case["plain"], case["fused"])
        assert case["fused_batches"] == 3, name  # 90 users in batches of 32, every one fused
    for prefilter in (False, True):  # the tie fix-up (and the prefilter's overflow rescans) ran
        assert sum(case["rescans"] for name, case in res["cases"].items()
                   if name.startswith("prefilter") == prefilter) > 0, prefilter
    assert res["mutants"] and all(v is True for v in res["mutants"].values()), res["mutants"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fused_evaluation_matches_the_matmul_path(monkeypatch):
    """A real (untrained) model on CUDA: the fused path's and the prefilter's metrics equal the
    matmul path's to fp32 rounding of the scores (they round each score their own way), and each
    other's exactly."""
    from core import evaluation
    from core.data.batching import DeviceSequences
    from core.data.shards import SequenceData
    from core.data.synthetic import PRESETS, generate
    from core.model import SASRec

    params = {**PRESETS["tiny"], "n_users": 3000, "n_items": 20_000}
    offsets, items = generate(**params, seed=5)
    data = SequenceData(offsets=offsets, items=items, n_users=3000, n_items=20_000, attrs={})
    seqs = DeviceSequences.from_data(data, "cuda")
    torch.manual_seed(0)
    model = SASRec(n_items=data.n_items, max_len=20).cuda().eval()
    args = dict(split="test", batch_size=1024, max_len=20, mask_history=True, ks=(10,),
                item_user_counts=data.train_item_user_counts(), n_train_users=evaluation.count_train_users(data))
    got = {}
    monkeypatch.setattr(evaluation, "PREFILTER_MIN_ITEMS", 0)  # 20,000 items: below the default cut
    for way in ("matmul", "fused", "prefilter"):
        monkeypatch.setattr(evaluation, "FUSED", way == "fused")
        monkeypatch.setattr(evaluation, "PREFILTER", way == "prefilter")
        got[way] = evaluation.evaluate_model(model, model, seqs, amp=True, **args)
    for way in ("fused", "prefilter"):
        for key, value in got["matmul"].items():
            assert abs(got[way][key] - value) <= 1e-3 * max(1.0, abs(value)), (way, key, got)
    # the prefilter and the fused path score alike (one FMA chain): the same metrics exactly
    assert got["prefilter"] == got["fused"], got


def test_the_prefilter_takes_only_large_catalogs(monkeypatch):
    """``ModelChunks`` takes the prefilter where the kernels run, for catalogs of at least
    ``PREFILTER_MIN_ITEMS`` items, else the matmul path (not the fused one: ``FUSED`` is off)."""
    from core import evaluation

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # "where the kernels run" (nothing is launched here)
    monkeypatch.setattr(evaluation, "PREFILTER", True)
    monkeypatch.setattr(evaluation, "FUSED", False)
    monkeypatch.setattr(evaluation, "PREFILTER_MIN_ITEMS", 100)
    users = torch.zeros(4, 8)
    for n_items, want in ((99, False), (100, True)):
        chunk = evaluation.ModelChunks(users, torch.zeros(n_items, 8))
        assert (chunk.prefilter, chunk.fused) == (want, want), n_items
    assert not evaluation.ModelChunks(users, torch.zeros(100, 8), offset=50).fused  # a rank's shard
    monkeypatch.setattr(evaluation, "PREFILTER", False)
    assert not evaluation.uses_prefilter(10**9)
