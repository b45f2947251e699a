#!/bin/bash
# Not yet run (written at the end of the sixth session of 2026-12-02, when the device time was
# spent). One H200, ~8 minutes. What this session's code has not yet shown on a GPU:
# (0) test_split_lse's CUDA bit-identity (224 s in session 5; ran out of call H's time) and
#     test_graph_step / test_flash_ce_skip on the GPU with the skip switch now entered through
#     ``core.losses.registry.filler_rows`` (the graphed step's packed buckets).
# (1) bench_epoch beauty-like flash_ce graph and graph+compile, min bucket 1,024 (default) and
#     128: predicted as call H (graph ~3.75 s; graph+compile 2.84 / 2.62 s), since the rule picks
#     the same kernels for packed buckets as call H's "N <= 2,048".
set -u
. experiments/bench/device/setup.sh
( sleep 500; pkill -f "bench_epoch|pytest" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
timeout 300 python -m pytest -m gpu -p no:cacheprovider -q -rfE tests/test_split_lse.py tests/test_graph_step.py \
  tests/test_flash_ce_skip.py > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
C="dataset.cache_dir = '/tmp/cache'"
for b in 1024 128; do
  timeout 90 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin --gin_bindings "$C" --epochs 1 \
    --warmup-steps 40 --sample-steps 20 --variants graph,graph+compile --graph-min-bucket $b --out $W/epoch_$b \
    > $W/epoch_$b.log 2>&1; echo "epoch $b rc $? $(date -u +%T)"
done
tar -czf $OUT/call_next.tar.gz -C /tmp res
echo "== pytest"; tail -3 $W/pytest.log
echo "== epoch"; for b in 1024 128; do grep -h "^| beauty" $W/epoch_$b.log | cut -d'|' -f2-6,10; done
