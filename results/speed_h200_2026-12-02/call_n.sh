#!/bin/bash
# Call N (seventh session of 2026-12-02; ran on 0692717, outputs in call_n/). One H200: where a graphed evaluation split's time goes
# (experiments/bench/device/probe_eval.py). Predictions: the replays' GPU time ~6 ms a 4,096-user
# batch (~1.05 s a split); the five eager first batches and captures ~0.3-0.5 s together; with
# EVAL_PREFILTER=1 many rows overflow on the untrained model (its scores crowd), which is why it
# was slower (call L).
set -u
. experiments/bench/device/setup.sh
( sleep 300; pkill -f "probe_eval|bench_eval" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
P="python experiments/bench/device/probe_eval.py --cache-dir /tmp/cache"
timeout 90 $P --profile > $W/probe_4096.log 2>&1; echo "probe 4096 rc $? $(date -u +%T)"
timeout 60 $P --batch-size 8192 > $W/probe_8192.log 2>&1; echo "probe 8192 rc $? $(date -u +%T)"
EVAL_PREFILTER=1 timeout 60 $P > $W/probe_prefilter.log 2>&1; echo "probe prefilter rc $? $(date -u +%T)"
tar -czf $OUT/call_n.tar.gz -C /tmp res
for n in 4096 8192 prefilter; do echo "== $n"; grep -E "^\||NDCG" $W/probe_$n.log | head -4; done
echo "== profile"; grep -v "^\s*$" $W/probe_4096.log | sed -n '/Name/,$p' | cut -c1-90,91-200 | head -32
