#!/bin/bash
# Call V (ninth session, 2026-12-03; ran on d2ae56b, outputs in call_v/, table in call_v/output.txt; 212 s). The prefilter (EVAL_PREFILTER=1,
# still off by default) with the tie fix-up's rows found by nonzero_static (no sync: the flags
# carry the count), TF32 tiles from call U, score_groups only at D <= 64.
# (1) The GPU tests of every evaluation path with the prefilter on (eval kernels, prefilter,
#     fused, graphs, streaming (the fix-up without a sync), bench_eval, kernels_bench).
# (2) score_groups' launch (groups per program, warps) at 8,192 users x 22 groups, do_bench.
# (3) bench_eval beauty-like test split (second split of a process): the prefilter at batch 8,192
#     with 22, 16 and 12 candidate groups and at batch 16,384 with 22, the matmul path
#     (EVAL_PREFILTER=0) at 8,192; metrics side by side; probe_eval at 8,192 with a profile.
# Predicted: fix-ups no longer drain the queue (call U: 0.17 s of 1.10 s for 12 rows), so the
# prefilter at 22 candidates ~1.0 s; 16 candidates ~0.1 s less (score_groups ~proportional to
# the candidates, 4.2 ms at 22 a 8,192 batch) if the overflow stays within the 128 rescued rows
# a batch; metrics identical to the matmul path.
set -u
. experiments/bench/device/setup.sh
( sleep 480; pkill -f "pytest|bench_eval|probe_eval" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
export EVAL_PREFILTER=1
timeout 200 python -m pytest -m gpu -q -p no:cacheprovider tests/test_eval_prefilter.py tests/test_eval_fused.py \
  tests/test_eval_kernels.py tests/test_eval_graphs.py tests/test_eval_streaming.py tests/test_bench_eval.py \
  tests/test_kernels_bench.py -s > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
timeout 60 python - > $W/score_groups.log 2>&1 <<'PY'
import torch
from triton.testing import do_bench
from core import eval_kernels as ek
g = torch.Generator(device="cuda").manual_seed(0)
B, V, D = 8192, 207649, 64
users, catalog = torch.randn(B, D, device="cuda", generator=g), torch.randn(V, D, device="cuda", generator=g) * 0.1
groups = torch.randint(0, V // 64, (B, 22), device="cuda", generator=g)
rows = torch.arange(B, device="cuda")
want = ek.score_groups(users, catalog, rows, groups, 0, V, 64)
print("| groups per program, warps | ms (8,192 x 22 groups) | equal |")
for t in [(4, 4), (1, 4), (2, 4), (8, 4), (22, 4), (4, 2), (4, 8), (2, 2), (1, 1), (1, 2), (2, 1), (4, 1)]:
    ek.SCORE_GROUPS_TILES = t
    got = ek.score_groups(users, catalog, rows, groups, 0, V, 64)
    print(f"| {t} | {do_bench(lambda: ek.score_groups(users, catalog, rows, groups, 0, V, 64)):.3f} | {torch.equal(got, want)} |")
PY
echo "score_groups rc $? $(date -u +%T)"
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --sample-batches 2 --chunk-size 65536 --batch-size 8192)
for c in 22 16 12; do
  EVAL_PREFILTER_CANDIDATES=$c timeout 45 python experiments/bench/bench_eval.py "${E[@]}" --out $W/pre_$c > $W/pre_$c.log 2>&1; echo "pre $c rc $? $(date -u +%T)"
done
EVAL_PREFILTER_CANDIDATES=22 timeout 60 python experiments/bench/bench_eval.py "${E[@]/8192/16384}" --out $W/pre_16k > $W/pre_16k.log 2>&1; echo "pre 16k rc $? $(date -u +%T)"
EVAL_PREFILTER=0 timeout 45 python experiments/bench/bench_eval.py "${E[@]}" --out $W/mm > $W/mm.log 2>&1; echo "mm rc $? $(date -u +%T)"
timeout 90 python experiments/bench/device/probe_eval.py --cache-dir /tmp/cache --batch-size 8192 --profile > $W/probe.log 2>&1; echo "probe rc $? $(date -u +%T)"
tar -czf $OUT/call_v.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|error|overflow|margin|Error|score_groups D" $W/pytest.log | tail -14
echo "== score_groups"; cat $W/score_groups.log | tail -11
echo "== probe"; grep -E "^\|" $W/probe.log | head -3; grep -E "Self CUDA|^-|^  " $W/probe.log | head -30 | cut -c1-160
echo "== eval"; for r in mm pre_22 pre_16 pre_12 pre_16k; do echo "$r $(grep -h '^| beauty' $W/$r.log | cut -d'|' -f5,8-13)"; done
python -c "
import json
for r in ('mm', 'pre_22', 'pre_16', 'pre_12', 'pre_16k'):
    try: print(r, {k: round(v, 6) for k, v in json.load(open(f'$W/{r}/results.json'))['rows'][0]['metrics'].items() if '@10' in k})
    except Exception as e: print(r, 'no results', e)"
