#!/bin/bash
# Call CC (tenth session, 2026-12-03; ran on ce7e6d5, outputs in call_cc/, table in call_cc/output.txt; 64 s), with the last ~250 s of device time. new = HEAD (call BB's
# code). bench_epoch beauty-like graph+compile at the default graph buckets (min bucket 1,024):
# call H measured 2.84 s in 0.42 GiB before this session's kernels (BB: 2.27 s in 0.60 GiB at
# min bucket 128). Predicted ~2.45-2.5 s, peak <= 0.42 GiB.
set -u
. experiments/bench/device/setup.sh
( sleep 150; pkill -f "bench_epoch" ) > /dev/null 2>&1 &
W=/tmp/res
cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
C="dataset.cache_dir = '/tmp/cache'"
timeout 140 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin --gin_bindings "$C" --epochs 1 \
  --warmup-steps 40 --sample-steps 20 --variants graph+compile --out $W/epoch_1024 > $W/epoch_1024.log 2>&1
echo "epoch 1024 rc $? $(date -u +%T)"
tar -czf $OUT/call_cc.tar.gz -C /tmp res
echo "== epoch"; grep -h "^| [bm]" $W/epoch_1024.log | cut -d'|' -f2-7,10,15,16
