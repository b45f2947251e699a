#!/bin/bash
# ran on d622673, 18:00-18:02 UTC (cold machine; 92 s); outputs in call_nn/ (the three logs, each ending with peak_trace's table).
# Call NN (thirteenth session, 2026-12-03). Why ml20m-like's peak grew from the 0.37 GiB
# (call D's old tree 9ced1f6, `graph`) to 0.41 GiB (call MM, HEAD, `graph+compile`): the blocks
# alive at the peak, by allocation site (experiments/bench/device/peak_trace.py), for HEAD
# graph+compile, the old tree's graph and HEAD's graph. Predicted: flash_ce's forward partials
# (slices x N x (D+1) fp32, saved for dE) and dC's row-slice workspace, ~10-40 MiB, are new.
set -u
. experiments/bench/device/setup.sh
( sleep 370; pkill -f "bench_epoch|peak_trace" ) > /dev/null 2>&1 &
K=$!
PT=/tmp/new/experiments/bench/device/peak_trace.py
F=(--gin gin/ml20m_like_flash_ce.gin --gin_bindings "dataset.cache_dir = '/tmp/cache'" --epochs 1 --warmup-steps 40 --sample-steps 20)
(cd /tmp/new && PYTHONPATH=/tmp/site:/tmp/new timeout 130 python $PT experiments/bench/bench_epoch.py "${F[@]}" \
  --variants graph+compile --out /tmp/e1 > $OUT/new_compile.log 2>&1; echo "new graph+compile rc $? $(date -u +%T)")
(cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 120 python $PT experiments/bench/bench_epoch.py "${F[@]}" \
  --variants graph --out /tmp/e2 > $OUT/old_graph.log 2>&1; echo "old graph rc $? $(date -u +%T)")
(cd /tmp/new && PYTHONPATH=/tmp/site:/tmp/new timeout 100 python $PT experiments/bench/bench_epoch.py "${F[@]}" \
  --variants graph --out /tmp/e3 > $OUT/new_graph.log 2>&1; echo "new graph rc $? $(date -u +%T)")
for f in new_compile old_graph new_graph; do echo "== $f"; grep -h "^| ml20m" $OUT/$f.log | cut -d'|' -f2-5,10; grep -A16 "^peak_trace" $OUT/$f.log | cut -c1-160; done
pkill -P $K; kill $K
