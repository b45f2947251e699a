#!/bin/bash
# Call J (sixth session of 2026-12-02; ran on 6e460ac, outputs in call_j/). One H200, one process at a time, this commit only.
# Call I measured the fused evaluation at 4.51 s a beauty-like split against 3.40 s for the
# matmul path (group_max 5.74 ms a batch at tiles 64,1,1,4: 19 TFLOP/s of FMA, where cuBLAS's
# fp32 GEMM does 39). Predictions:
# (0) GPU tests: bit-identity at the new tile shapes (several groups per tile, several tiles
#     per program), the no-sync test with the Surprisal copy taken first.
# (1) tune_eval_kernel: some tile 1.5-2x faster than 64,1,1,4 (users' block loaded once per
#     program, wider tiles); the GEMM + group max ~3.5 ms.
# (2) bench_eval beauty-like test split: fused at the best tiles (warm-up), matmul, fused:
#     fused at the best tiles ~2-3 s if group_max gets under ~3 ms. (Shortened after a failed
#     start left 388 s of device time.)
set -u
. experiments/bench/device/setup.sh
( sleep 200; pkill -f "bench_eval|pytest|tune_eval" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
timeout 60 python -m pytest -m gpu -p no:cacheprovider -q -rfE -s tests/test_eval_kernels.py -k bit_identical \
  tests/test_eval_streaming.py > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
timeout 75 python kernels_bench/tune_eval_kernel.py --out $W/tune > $W/tune.log 2>&1; echo "tune rc $? $(date -u +%T)"
BEST=$(python -c "import pandas as p; f=p.read_csv('$W/tune/tune_eval_kernel.csv'); f=f[f.what=='group_max'].dropna(subset=['ms']); print(f.sort_values('ms').tiles.iloc[0])" 2>/dev/null || echo 64,1,1,4)
echo "best tiles $BEST"
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --chunk-size 65536 --sample-batches 2)
for f in 1 0 1; do
  EVAL_FUSED=$f EVAL_GROUP_MAX_TILES=$BEST timeout 30 python experiments/bench/bench_eval.py "${E[@]}" \
    --out $W/eval_$f > $W/eval_$f.log 2>&1; echo "eval fused=$f rc $? $(date -u +%T)"
done
tar -czf $OUT/call_j.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|FAILED|differ" $W/pytest.log | tail -10
echo "== tune"; grep "^|" $W/tune.log | head -14
echo "== eval (fused=0, fused=1 at $BEST)"; for f in 0 1; do grep -h "^| beauty" $W/eval_$f.log | cut -d'|' -f8-19; done
