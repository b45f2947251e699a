#!/bin/bash
# Call P (seventh session of 2026-12-02; ran on 440ec27, outputs in call_p/). One H200, the final check of this session's evaluation.
# (0) GPU tests of the evaluation (graphs with warm shapes: the second split replays every full
#     batch; streaming; fused and prefilter): pass.
# (1) bench_eval beauty-like test split, graphs, chunk 65,536, the second of two splits: with the
#     warm shapes' first batches replayed too, ~0.1 s under call O's 1.31 s (batch 4,096) and
#     1.21 s (8,192).
# (2) probe_eval at batch 8,192: the second split's parts (replay GPU time ~1.03 s as in call N).
set -u
. experiments/bench/device/setup.sh
( sleep 300; pkill -f "bench_eval|probe_eval|pytest" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
timeout 120 python -m pytest -m gpu -p no:cacheprovider -q -rfE tests/test_eval_graphs.py tests/test_eval_streaming.py \
  tests/test_eval_fused.py > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --sample-batches 2 --chunk-size 65536)
for b in 4096 8192; do
  timeout 60 python experiments/bench/bench_eval.py "${E[@]}" --batch-size $b --out $W/eval_$b > $W/eval_$b.log 2>&1
  echo "eval $b rc $? $(date -u +%T)"
done
timeout 60 python experiments/bench/device/probe_eval.py --cache-dir /tmp/cache --batch-size 8192 > $W/probe_8192.log 2>&1
echo "probe rc $? $(date -u +%T)"
tar -czf $OUT/call_p.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|FAILED|Error" $W/pytest.log | tail -6
echo "== eval"; for b in 4096 8192; do grep -h "^| beauty" $W/eval_$b.log | cut -d'|' -f5,8-13; done
echo "== probe"; grep -E "^\|" $W/probe_8192.log | tail -1
