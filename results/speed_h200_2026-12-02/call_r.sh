#!/bin/bash
# Call R (seventh session of 2026-12-02; ran on e9fbfbd, outputs in call_r/). One H200: why the prefilter was slower (call N: 8.84 ms
# of replay a 4,096-user batch vs 6.59, 3,372 rows rescanned). Prediction: each batch with an
# overflow row syncs in the fix-up (its nonzero waits for the next batch's replay), so the
# pipeline serializes; with 44 candidate groups almost no row overflows, and the split drops to
# the replays' GPU time.
set -u
. experiments/bench/device/setup.sh
( sleep 280; pkill -f "bench_eval|probe_eval" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
P="python experiments/bench/device/probe_eval.py --cache-dir /tmp/cache"
for c in 22 44; do
  EVAL_PREFILTER=1 EVAL_PREFILTER_CANDIDATES=$c timeout 60 $P > $W/probe_$c.log 2>&1; echo "probe $c rc $? $(date -u +%T)"
done
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --sample-batches 2 --chunk-size 65536)
for b in 4096 8192; do
  EVAL_PREFILTER=1 EVAL_PREFILTER_CANDIDATES=44 timeout 60 python experiments/bench/bench_eval.py "${E[@]}" --batch-size $b \
    --out $W/eval_$b > $W/eval_$b.log 2>&1; echo "eval $b rc $? $(date -u +%T)"
done
tar -czf $OUT/call_r.tar.gz -C /tmp res
echo "== probe"; for c in 22 44; do grep -E "^\||NDCG" $W/probe_$c.log | sed -n '1p;4p'; done
echo "== eval"; for b in 4096 8192; do grep -h "^| beauty" $W/eval_$b.log | cut -d'|' -f5,8-13; done
python -c "import json; [print(b, {k: round(v, 6) for k, v in json.load(open(f'$W/eval_{b}/results.json'))['rows'][0]['metrics'].items() if '@10' in k}) for b in (4096, 8192)]"
