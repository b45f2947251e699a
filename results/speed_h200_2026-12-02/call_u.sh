#!/bin/bash
# Call U (eighth session, 2026-12-03; ran on 3986d7d, outputs in call_u/, table in call_u/output.txt; 120 s). The prefilter rebuilt: TF32 group maxima in
# registers (group_max precision "tf32") instead of call R's TF32 GEMM + contiguous group max
# (~6.6 ms a 4,096-user batch), and up to 128 uncertified rows a batch redone exactly in the
# graph instead of call R's syncing fix-ups (1.92 s a split); candidates (and poisoned groups)
# scored by score_groups (a group's rows as one tile) instead of score_columns (~2.2 ms per 22
# groups a 4,096-user batch in call R).
# (1) GPU tests of the evaluation kernels and paths (the prefilter's: no sync with the rescue,
#     certified rows bit-equal to fused_chunk_top, TF32 maxima within half their margin;
#     score_groups bit-equal to score_columns, both timed).
# (2) tune_eval_kernel --precision tf32: the TF32 tiles; the fastest is used below.
# (3) bench_eval beauty-like test split (second split of a process): the matmul path (graphs) at
#     8,192 against the prefilter at 8,192, and again with score_columns for score_groups
#     (EVAL_SCORE_GROUPS=0), metrics printed side by side; probe_eval of the prefilter at 8,192
#     (replays' GPU time, rows left to the fix-up).
# Predicted: TF32 group_max ~0.5-1 ms a 4,096-user batch; prefilter replays ~5-7 ms a 8,192 batch
# (candidates' exact scoring ~1-2 ms of it), a split ~0.6-0.9 s against the matmul path's ~1.2 s;
# metrics identical.
set -u
. experiments/bench/device/setup.sh
( sleep 530; pkill -f "pytest|bench_eval|probe_eval|tune_eval" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
timeout 200 python -m pytest -m gpu -q -p no:cacheprovider tests/test_eval_prefilter.py tests/test_eval_fused.py \
  tests/test_eval_kernels.py tests/test_eval_graphs.py -s > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
timeout 90 python kernels_bench/tune_eval_kernel.py --precision tf32 --out $W/tune > $W/tune.log 2>&1; echo "tune rc $? $(date -u +%T)"
T=$(python -c "
import pandas as pd; f = pd.read_csv('$W/tune/tune_eval_kernel_tf32.csv'); f = f[f.what == 'group_max tf32'].dropna(subset=['ms'])
print(f.sort_values('ms').tiles.iloc[0] if len(f) else '128,2,2,8')" 2>/dev/null || echo 128,2,2,8)
export EVAL_TF32_TILES=$T; echo "tf32 tiles $T"
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --sample-batches 2 --chunk-size 65536)
EVAL_PREFILTER=1 timeout 60 python experiments/bench/bench_eval.py "${E[@]}" --batch-size 8192 --out $W/pre_8192 > $W/pre_8192.log 2>&1; echo "pre 8192 rc $? $(date -u +%T)"
timeout 60 python experiments/bench/bench_eval.py "${E[@]}" --batch-size 8192 --out $W/mm_8192 > $W/mm_8192.log 2>&1; echo "mm 8192 rc $? $(date -u +%T)"
EVAL_PREFILTER=1 timeout 60 python experiments/bench/device/probe_eval.py --cache-dir /tmp/cache --batch-size 8192 > $W/probe.log 2>&1; echo "probe rc $? $(date -u +%T)"
EVAL_PREFILTER=1 EVAL_SCORE_GROUPS=0 timeout 50 python experiments/bench/bench_eval.py "${E[@]}" --batch-size 8192 --out $W/pre_cols > $W/pre_cols.log 2>&1; echo "pre cols rc $? $(date -u +%T)"
tar -czf $OUT/call_u.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|error|overflow|margin|Error|score_groups" $W/pytest.log | tail -14
echo "== tune"; tail -14 $W/tune.log
echo "== probe"; grep -E "^\|" $W/probe.log | head -4
echo "== eval"; for r in mm_8192 pre_8192 pre_cols; do echo "$r $(grep -h '^| beauty' $W/$r.log | cut -d'|' -f5,8-13)"; done
python -c "
import json
for r in ('mm_8192', 'pre_8192', 'pre_cols'):
    try: print(r, {k: round(v, 6) for k, v in json.load(open(f'$W/{r}/results.json'))['rows'][0]['metrics'].items() if '@10' in k})
    except Exception as e: print(r, 'no results', e)"
