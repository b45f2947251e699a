#!/bin/bash
# Call W (ninth session, 2026-12-03; ran on f4be7c3, outputs in call_w/, table in call_w/output.txt; 132 s). score_groups rewritten: the
# (user, group) pairs sorted by group, each distinct group of a program's 16 (or 32, 64) pairs
# read once as a tile and scored against all their users by one ieee tl.dot (call V's profile:
# the old kernel, one user a program with 15 zero rows, was 480 of 952 ms of a prefiltered
# split's GPU time).
# (1) The GPU tests of every evaluation path with the prefilter on (score_groups bit-identical
#     to score_columns at D = 64 and 100; prefilter, fused, graphs, streaming, bench_eval).
# (2) score_groups' launch (pairs per program, warps) at 8,192 users x 22 random groups of
#     207,649 items, do_bench; the fastest is used below.
# (3) bench_eval beauty-like test split (second split of a process): the prefilter at batch 8,192
#     and 16,384, the matmul path (EVAL_PREFILTER=0) at 8,192; metrics side by side;
#     probe_eval at 8,192 with a profile.
# Predicted: score_groups ~4x faster (~55 users share a group in a 8,192 batch even at random),
# i.e. ~0.3 ms a call instead of 1.33, so the prefiltered split ~0.3 s less: ~0.75-0.8 s at
# 8,192; metrics identical to the matmul path.
set -u
. experiments/bench/device/setup.sh
( sleep 400; pkill -f "pytest|bench_eval|probe_eval" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
export EVAL_PREFILTER=1
timeout 150 python -m pytest -m gpu -q -p no:cacheprovider tests/test_eval_prefilter.py tests/test_eval_fused.py \
  tests/test_eval_kernels.py tests/test_eval_graphs.py tests/test_eval_streaming.py tests/test_bench_eval.py \
  -s > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
timeout 60 python - > $W/score_groups.log 2>&1 <<'PY'
import torch
from triton.testing import do_bench
from core import eval_kernels as ek
g = torch.Generator(device="cuda").manual_seed(0)
B, V, D = 8192, 207649, 64
users, catalog = torch.randn(B, D, device="cuda", generator=g), torch.randn(V, D, device="cuda", generator=g) * 0.1
groups = torch.randint(0, -(-V // 64), (B, 22), device="cuda", generator=g)
rows = torch.arange(B, device="cuda")
c = (groups[:, :, None] * 64 + torch.arange(64, device="cuda")).flatten(1)
want = ek.score_columns(users, catalog, rows, torch.where(c < V, c, -1))
print(f"| score_columns | {do_bench(lambda: ek.score_columns(users, catalog, rows, torch.where(c < V, c, -1))):.3f} | True |")
best = None
for t in [(16, 4), (16, 1), (16, 2), (16, 8), (32, 2), (32, 4), (32, 8), (64, 4), (64, 8)]:
    ek.SCORE_GROUPS_TILES = t
    got = ek.score_groups(users, catalog, rows, groups, 0, V, 64)
    ms, eq = do_bench(lambda: ek.score_groups(users, catalog, rows, groups, 0, V, 64)), torch.equal(got, want)
    print(f"| {t} | {ms:.3f} | {eq} |")
    if eq and (best is None or ms < best[0]):
        best = (ms, t)
print("BEST", ",".join(map(str, best[1])))
PY
echo "score_groups rc $? $(date -u +%T)"
T=$(grep BEST $W/score_groups.log | cut -d' ' -f2); export EVAL_SCORE_GROUPS_TILES=${T:-16,4}; echo "tiles $EVAL_SCORE_GROUPS_TILES"
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --sample-batches 2 --chunk-size 65536)
timeout 60 python experiments/bench/bench_eval.py "${E[@]}" --batch-size 8192 --out $W/pre_8k > $W/pre_8k.log 2>&1; echo "pre 8k rc $? $(date -u +%T)"
timeout 60 python experiments/bench/bench_eval.py "${E[@]}" --batch-size 16384 --out $W/pre_16k > $W/pre_16k.log 2>&1; echo "pre 16k rc $? $(date -u +%T)"
EVAL_PREFILTER=0 timeout 45 python experiments/bench/bench_eval.py "${E[@]}" --batch-size 8192 --out $W/mm > $W/mm.log 2>&1; echo "mm rc $? $(date -u +%T)"
timeout 80 python experiments/bench/device/probe_eval.py --cache-dir /tmp/cache --batch-size 8192 --profile > $W/probe.log 2>&1; echo "probe rc $? $(date -u +%T)"
tar -czf $OUT/call_w.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|overflow|margin|Error|score_groups D" $W/pytest.log | tail -12
echo "== score_groups (ms, 8,192 x 22 groups)"; cat $W/score_groups.log | tail -12
echo "== probe"; grep -E "^\|" $W/probe.log | tail -1; grep -E "_kernel|mbtopk" $W/probe.log | head -6 | sed "s/  */ /g" | cut -c1-160
echo "== eval"; for r in mm pre_8k pre_16k; do echo "$r $(grep -h '^| beauty' $W/$r.log | cut -d'|' -f5,8-13)"; done
python -c "
import json
for r in ('mm', 'pre_8k', 'pre_16k'):
    try: print(r, {k: round(v, 6) for k, v in json.load(open(f'$W/{r}/results.json'))['rows'][0]['metrics'].items() if '@10' in k})
    except Exception as e: print(r, 'no results', e)"
