#!/bin/bash
# Call H (sixth session of 2026-12-02; ran on 87a0c13, outputs in call_h/). One H200, one process at a time. new = this commit,
# old = c1fc8a4 (call G's tree: before the metrics' sync fix, the direct launches and the
# row-count rule of the skip switch). Predictions:
# (0) GPU tests: direct launches equal Triton's own bit for bit and both broken variants are
#     caught; adding a batch to the metrics makes no host sync; the skip rule's default.
# (1) eager_point 560 x 207,649: kernel[grid] launches ~0.72 ms (call D: 0.717), direct
#     launches ~0.60-0.65 ms (6 launches x ~10-15 us of Triton's binding saved).
# (2) bench_eval beauty-like test split, chunk 65,536, old / new / old / new (the first run of a
#     fresh machine is warm-up): call G measured 2.53 s with 5 syncs a batch, 6.0 ms GPU a
#     batch (1.08 s a split): host-bound. With 1 sync a batch, predicted ~1.3-1.6 s (the GPU's
#     1.08 s plus what the host cannot hide). Batch 8,192 (half the batches, so half the
#     per-batch host work): predicted a further -0.1 to -0.3 s, peak ~4 GiB.
# (3) bench_epoch graph+compile (the fastest variant): beauty-like min bucket 1,024 / 256 / 128
#     with the skip on (its default at <= 2,048 rows now): call G 2.98 s at 1,024 with skip
#     off; predicted ~2.8 / ~2.5 / ~2.4 s, peak 0.42 -> ~0.6 GiB with the smaller buckets.
#     ml20m-like (skip off by the rule): call G 0.73 s, predicted the same.
# (4) test_split_lse's CUDA bit-identity (224 s in call 5c) if the time allows.
set -u
. experiments/bench/device/setup.sh
( sleep 560; pkill -f "bench_epoch|bench_eval|pytest|eager_point" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
timeout 150 python -m pytest -m gpu -p no:cacheprovider -q -rfE tests/test_flash_ce.py -k direct \
  tests/test_eval_streaming.py tests/test_flash_ce_skip.py > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
timeout 60 python kernels_bench/eager_point.py --out $W/eager > $W/eager.log 2>&1; echo "eager rc $? $(date -u +%T)"
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --chunk-size 65536)
for t in old new old new; do
  (cd /tmp/$t && PYTHONPATH=/tmp/site:/tmp/$t timeout 45 python experiments/bench/bench_eval.py "${E[@]}" \
    --out $W/eval_$t > $W/eval_$t.log 2>&1; echo "eval $t rc $? $(date -u +%T)")
done
timeout 60 python experiments/bench/bench_eval.py "${E[@]}" --batch-size 8192 --profile-batches 3 --sample-batches 3 \
  --out $W/eval_8192 > $W/eval_8192.log 2>&1; echo "eval 8192 rc $? $(date -u +%T)"
C="dataset.cache_dir = '/tmp/cache'"
F=(--gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile)
for b in 1024 256 128; do
  timeout 60 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin "${F[@]}" --graph-min-bucket $b \
    --out $W/epoch_$b > $W/epoch_$b.log 2>&1; echo "epoch beauty $b rc $? $(date -u +%T)"
done
timeout 50 python experiments/bench/bench_epoch.py --gin gin/ml20m_like_flash_ce.gin "${F[@]}" --out $W/epoch_ml > $W/epoch_ml.log 2>&1
echo "epoch ml20m rc $? $(date -u +%T)"
timeout 240 python -m pytest -m gpu -p no:cacheprovider -q -rfE tests/test_split_lse.py > $W/split_lse.log 2>&1; echo "split_lse rc $? $(date -u +%T)"
find $W -name '*.pt' -delete; tar -czf $OUT/call_h.tar.gz -C /tmp res
echo "== pytest"; tail -3 $W/pytest.log; tail -2 $W/split_lse.log
echo "== eager"; grep "^| [fa]" $W/eager.log | cut -d'|' -f2-6
echo "== eval"; for t in old new 8192; do grep -h "^| beauty" $W/eval_$t.log | cut -d'|' -f8-18; done
echo "== epoch"; for f in 1024 256 128 ml; do grep -h "^| [bm]" $W/epoch_$f.log | cut -d'|' -f2-6,10; done
