#!/bin/bash
# Call M (seventh session of 2026-12-02; ran on 65a19ef, outputs in call_m/). One H200, a short check of this commit.
# (0) The send_flags GPU test, fixed (call L's failure was the test's own torch.equal, which
#     synced before the event was queried), with the other evaluation GPU tests: all pass.
# (1) bench_eval beauty-like test split, graphs (the default now), batch 4,096 and 8,192:
#     ~1.9 s and ~1.6 s as in call L.
set -u
. experiments/bench/device/setup.sh
( sleep 240; pkill -f "bench_eval|pytest" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
timeout 120 python -m pytest -m gpu -p no:cacheprovider -q -rfE tests/test_eval_streaming.py tests/test_eval_graphs.py \
  tests/test_eval_fused.py > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --sample-batches 2 --chunk-size 65536)
for b in 4096 8192; do
  timeout 45 python experiments/bench/bench_eval.py "${E[@]}" --batch-size $b --out $W/eval_$b > $W/eval_$b.log 2>&1
  echo "eval $b rc $? $(date -u +%T)"
done
tar -czf $OUT/call_m.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|FAILED|Error" $W/pytest.log | tail -6
echo "== eval"; for b in 4096 8192; do grep -h "^| beauty" $W/eval_$b.log | cut -d'|' -f5,8-12; done
