#!/bin/bash
# Call I (sixth session of 2026-12-02; ran on d79bd0e, outputs in call_i/). One H200, one process at a time, this commit only.
# Predictions:
# (0) GPU tests: the eval kernels' bit-identity (group_max vs score_columns, both tile
#     arithmetics), fused vs matmul metrics, no host sync in a queued batch (now fused).
# (1) bench_eval beauty-like test split, EVAL_FUSED=0 / 1 / 0 / 1 (first run: warm-up). Call H:
#     2.85 s (matmul path, 6.0 ms of GPU a batch, ~16 ms of wall). Fused: one group-max launch
#     over the whole catalog and ~15 small ops a batch instead of ~100: predicted ~0.8-1.2 s.
# (2) eager_point: the skip switch off again for eager calls: kernels back to ~0.28 ms (call D),
#     wall ~0.65-0.72 ms (host-bound).
# (3) bench_epoch graph+compile beauty-like min bucket 128 (skip on in packed buckets): call H
#     2.62 s at 0.77 GiB.
set -u
. experiments/bench/device/setup.sh
( sleep 420; pkill -f "bench_epoch|bench_eval|pytest|eager_point" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
timeout 200 python -m pytest -m gpu -p no:cacheprovider -q -rfE -s tests/test_eval_kernels.py tests/test_eval_fused.py \
  tests/test_eval_streaming.py > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --chunk-size 65536)
for f in 0 1 0 1; do
  EVAL_FUSED=$f timeout 45 python experiments/bench/bench_eval.py "${E[@]}" --profile-batches 3 --sample-batches 3 \
    --out $W/eval_$f > $W/eval_$f.log 2>&1; echo "eval fused=$f rc $? $(date -u +%T)"
done
timeout 40 python kernels_bench/eager_point.py --out $W/eager > $W/eager.log 2>&1; echo "eager rc $? $(date -u +%T)"
C="dataset.cache_dir = '/tmp/cache'"
F=(--gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile)
timeout 80 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin "${F[@]}" --graph-min-bucket 128 \
  --out $W/epoch_128 > $W/epoch_128.log 2>&1; echo "epoch beauty 128 rc $? $(date -u +%T)"
find $W -name '*.pt' -delete; tar -czf $OUT/call_i.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|FAILED|differ" $W/pytest.log | tail -8
echo "== eval"; for f in 0 1; do grep -h "^| beauty" $W/eval_$f.log | cut -d'|' -f8-19; done
echo "== eager"; grep "^| [fa]" $W/eager.log | cut -d'|' -f2-6
echo "== epoch"; for f in 128; do grep -h "^| [bm]" $W/epoch_$f.log | cut -d'|' -f2-6,10; done
