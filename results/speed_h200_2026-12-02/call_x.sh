#!/bin/bash
# Call X (ninth session, 2026-12-03; ran on 4a381a9, outputs in call_x/ (the runs without their checkpoints), table in call_x/output.txt; 274 s; pytest was cut at 200 s). The prefilter is now the default evaluation on CUDA,
# evaluation on CUDA, score_groups' launch (32, 2) from call W, score_groups at every head dim.
# (1) Beside each other (not timed): the GPU tests of every evaluation path and of the paths
#     that evaluate (graph step, packed, distributed training, env, metrics) with the defaults;
#     Beauty 5-core and ML-100K trained with flash_ce for 20 epochs (experiments/run.py).
# (2) check_prefilter_trained: the two trained models' valid and test metrics, prefilter against
#     the matmul path, in one process.
# (3) bench_eval (second split of a process), alone on the GPU: beauty-like test split at the
#     default batch (4,096) and at 16,384, the matmul path at 16,384; ml20m-like at the default
#     batch, prefilter and matmul path.
# Predicted: tests pass; trained models' metrics identical on both paths; beauty-like ~0.6 s at
# 16,384 (call W: 0.617 s) and ~0.9 s at 4,096; ml20m-like no slower than the matmul path.
set -u
. experiments/bench/device/setup.sh
( sleep 470; pkill -f "pytest|bench_eval|run.py|check_prefilter" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
(timeout 200 python -m pytest -m gpu -q -p no:cacheprovider -W ignore -rfE --tb=short tests/test_eval_prefilter.py \
  tests/test_eval_fused.py tests/test_eval_kernels.py tests/test_eval_graphs.py tests/test_eval_streaming.py \
  tests/test_bench_eval.py tests/test_graph_step.py tests/test_packed.py tests/test_env.py tests/test_metrics.py \
  tests/test_model.py tests/test_distributed_training.py -s > $W/pytest.log 2>&1; echo "rc $?" >> $W/pytest.log) &
PIDS="$!"
for g in beauty5core ml100k; do
  (timeout 200 python experiments/run.py --gin gin/${g}_flash_ce.gin --gin_bindings "train.epochs = 20" \
    --out $W/run_$g > $W/run_$g.log 2>&1; echo "rc $?" >> $W/run_$g.log) &
  PIDS="$PIDS $!"
done
wait $PIDS
echo "pytest $(tail -1 $W/pytest.log), runs $(tail -1 $W/run_beauty5core.log) $(tail -1 $W/run_ml100k.log) $(date -u +%T)"
timeout 90 python experiments/bench/device/check_prefilter_trained.py $W/run_beauty5core $W/run_ml100k > $W/trained.log 2>&1; echo "trained rc $? $(date -u +%T)"
E=(--cache-dir /tmp/cache --path streaming --scorers model --splits test --sample-batches 2 --chunk-size 65536)
timeout 60 python experiments/bench/bench_eval.py --preset beauty-like "${E[@]}" --out $W/pre_def > $W/pre_def.log 2>&1; echo "pre default rc $? $(date -u +%T)"
timeout 60 python experiments/bench/bench_eval.py --preset beauty-like "${E[@]}" --batch-size 16384 --out $W/pre_16k > $W/pre_16k.log 2>&1; echo "pre 16k rc $? $(date -u +%T)"
EVAL_PREFILTER=0 timeout 60 python experiments/bench/bench_eval.py --preset beauty-like "${E[@]}" --batch-size 16384 --out $W/mm_16k > $W/mm_16k.log 2>&1; echo "mm 16k rc $? $(date -u +%T)"
timeout 60 python experiments/bench/bench_eval.py --preset ml20m-like "${E[@]}" --out $W/ml_pre > $W/ml_pre.log 2>&1; echo "ml pre rc $? $(date -u +%T)"
EVAL_PREFILTER=0 timeout 60 python experiments/bench/bench_eval.py --preset ml20m-like "${E[@]}" --out $W/ml_mm > $W/ml_mm.log 2>&1; echo "ml mm rc $? $(date -u +%T)"
tar -czf $OUT/call_x.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|FAILED|ERROR|overflow|margin|score_groups D" $W/pytest.log | tail -12 | cut -c1-300
echo "== trained runs"; grep -hE "^test on|^valid on" $W/run_*.log | cut -c1-200
echo "== prefilter vs matmul path, trained"; grep -E "NDCG|seconds|differ" $W/trained.log
echo "== eval"; for r in pre_def pre_16k mm_16k ml_pre ml_mm; do echo "$r $(grep -h '^| \(beauty\|ml20m\)' $W/$r.log | cut -d'|' -f2,5,8-13)"; done
python -c "
import json
for r in ('pre_def', 'pre_16k', 'mm_16k', 'ml_pre', 'ml_mm'):
    try: print(r, {k: round(v, 6) for k, v in json.load(open(f'$W/{r}/results.json'))['rows'][0]['metrics'].items() if '@10' in k})
    except Exception as e: print(r, 'no results', e)"
