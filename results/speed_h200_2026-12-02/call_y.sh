#!/bin/bash
# Call Y (ninth session, 2026-12-03; ran on 8f92594, outputs in call_y/, table in call_y/output.txt; 177 s; two earlier tries got no machine). The prefilter only for catalogs of
# at least PREFILTER_MIN_ITEMS (100,000) items (call X: 7x slower than the matmul path at
# ml20m-like's 20,729 items, 1.9x faster at beauty-like's 207,649).
# (1) The GPU tests of every evaluation path (call X cut its list at 200 s in
#     test_distributed_training, which evaluates a small catalog: not rerun here).
# (2) bench_eval, second split of a process, alone on the GPU:
#     - beauty-like test split at batch 16,384 with score_groups' launch (32, 2) (call W's sweep
#       without history) and (16, 4) (call X's GPU test with history: (32, 2) 1.995 ms against
#       W's 0.712 at (16, 4));
#     - the cut: synthetic catalogs of 65,536 and 131,072 items (beauty-like otherwise, 300,000
#       users), prefilter (EVAL_PREFILTER_MIN_ITEMS=0) against the matmul path, batch 4,096;
#     - ml20m-like at the defaults (now the matmul path).
# Predicted: tests pass; (16, 4) no slower than (32, 2) in the split; the prefilter wins at
# 131,072 and about ties at 65,536; ml20m-like ~0.19 s (call X's matmul path).
set -u
. experiments/bench/device/setup.sh
( sleep 280; pkill -f "pytest|bench_eval" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
timeout 100 python -m pytest -m gpu -q -p no:cacheprovider -W ignore -rfE --tb=short tests/test_eval_prefilter.py \
  tests/test_eval_fused.py tests/test_eval_kernels.py tests/test_eval_graphs.py tests/test_eval_streaming.py \
  tests/test_bench_eval.py tests/test_metrics.py -s > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
E=(--cache-dir /tmp/cache --path streaming --scorers model --splits test --sample-batches 2 --chunk-size 65536)
for t in 32,2 16,4; do
  EVAL_SCORE_GROUPS_TILES=$t timeout 35 python experiments/bench/bench_eval.py --preset beauty-like "${E[@]}" --batch-size 16384 \
    --out $W/tiles_$t > $W/tiles_$t.log 2>&1; echo "tiles $t rc $? $(date -u +%T)"
done
for n in 131072 65536; do
  printf "dataset.name = 'items-$n'\ndataset.synthetic_preset = 'beauty-like'\ndataset.synthetic_overrides = {'n_items': $n, 'n_users': 300000}\n" > /tmp/items_$n.gin
  EVAL_PREFILTER_MIN_ITEMS=0 timeout 40 python experiments/bench/bench_eval.py --gin /tmp/items_$n.gin "${E[@]}" --out $W/pre_$n > $W/pre_$n.log 2>&1; echo "pre $n rc $? $(date -u +%T)"
  EVAL_PREFILTER=0 timeout 30 python experiments/bench/bench_eval.py --gin /tmp/items_$n.gin "${E[@]}" --out $W/mm_$n > $W/mm_$n.log 2>&1; echo "mm $n rc $? $(date -u +%T)"
done
timeout 30 python experiments/bench/bench_eval.py --preset ml20m-like "${E[@]}" --out $W/ml_def > $W/ml_def.log 2>&1; echo "ml default rc $? $(date -u +%T)"
tar -czf $OUT/call_y.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|FAILED|ERROR|score_groups D" $W/pytest.log | tail -12 | cut -c1-300
echo "== eval"; for r in tiles_32,2 tiles_16,4 pre_65536 mm_65536 pre_131072 mm_131072 ml_def; do
  echo "$r $(grep -h '^| \(beauty\|ml20m\|items\)' $W/$r.log | cut -d'|' -f2,4,5,8-13)"; done
python -c "
import json
for r in ('tiles_32,2', 'tiles_16,4', 'pre_65536', 'mm_65536', 'pre_131072', 'mm_131072', 'ml_def'):
    try: print(r, {k: round(v, 6) for k, v in json.load(open(f'$W/{r}/results.json'))['rows'][0]['metrics'].items() if '@10' in k})
    except Exception as e: print(r, 'no results', e)"
