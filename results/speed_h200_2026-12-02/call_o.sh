#!/bin/bash
# Call O (seventh session of 2026-12-02; ran on c4b7b54, outputs in call_o/). One H200.
# (1) kernels_bench/eval_gemm.py: the scoring GEMM in other operand layouts. Today's runs at
#     ~32 TFLOP/s (call N's profile: 0.61 s of a split's 1.19 s GPU time); predicted: some layout
#     40-50 TFLOP/s, bit for bit the same scores (one FMA chain over D = 64 each).
# (2) bench_eval beauty-like test split, graphs, now timed twice (seconds = the second):
#     batch 4,096 ~1.25-1.35 s warm, batch 8,192 ~1.2 s (call N's probe: 1.33 / 1.23 s).
set -u
. experiments/bench/device/setup.sh
( sleep 300; pkill -f "bench_eval|eval_gemm" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
timeout 60 python kernels_bench/eval_gemm.py --out $W/gemm > $W/gemm.log 2>&1; echo "gemm rc $? $(date -u +%T)"
timeout 60 python kernels_bench/eval_gemm.py --chunk 32768 --out $W/gemm_32k > $W/gemm_32k.log 2>&1; echo "gemm 32k rc $? $(date -u +%T)"
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --sample-batches 2 --chunk-size 65536)
for b in 4096 8192; do
  timeout 60 python experiments/bench/bench_eval.py "${E[@]}" --batch-size $b --out $W/eval_$b > $W/eval_$b.log 2>&1
  echo "eval $b rc $? $(date -u +%T)"
done
tar -czf $OUT/call_o.tar.gz -C /tmp res
echo "== gemm"; cat $W/gemm.log | tail -7; tail -6 $W/gemm_32k.log
echo "== eval"; for b in 4096 8192; do grep -h "^| beauty" $W/eval_$b.log | cut -d'|' -f5,8-13; done
