#!/bin/bash
# ran on 4632737, 17:46-17:49 UTC, on call KK's warm machine (163 s); outputs in call_ll/ (quality/ = the ML-100K runs' records, checkpoints removed).
# Call LL (thirteenth session, 2026-12-03), new = HEAD, right after KK.
# (1) ML-100K quality, seeds 0-2 (KK's ML-100K runs found call KK's first try's killed runs in
#     their folders and refused: fresh folders here), side by side, no timing. Predicted within
#     seed noise of FF's 0.0954 +- 0.0023.
# (2) then, one process at a time alone on the GPU, the four targets with the committed
#     code: bench_epoch beauty-like and ml20m-like (graph+compile, min bucket 128; predicted
#     ~1.87 s and <= 0.6 s), the eager flash_ce point (predicted <= 0.6 ms), and the
#     beauty-like evaluation's test split at 16,384 users a batch (predicted ~0.62 s).
set -u
. experiments/bench/device/setup.sh
R=/tmp/r2; mkdir -p $R /tmp/q2; Q=
( sleep 570; pkill -f "bench_epoch|bench_eval|eager_point|experiments/run.py"; sleep 3; tar -czf $OUT/ll.tgz -C /tmp r2 q2 ) > /dev/null 2>&1 &
K=$!
cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
S=results/tune_h200_2026-12-02/studies
B=(--gin_bindings "train.compile = True" --gin_bindings "train.graph_min_bucket = 128")
for s in 0 1 2; do
  (timeout 120 python experiments/run.py --gin $S/ml100k_flash_ce/final/default_s$s/config.gin "${B[@]}" \
     --out /tmp/q2/ml100k_s$s > $R/q_ml100k_s$s.log 2>&1; echo "rc $? $(date -u +%T)" >> $R/q_ml100k_s$s.log) &
  Q="$Q $!"; done
wait $Q; echo "quality $(date -u +%T)"
python experiments/bench/device/quality_table.py /tmp/q2 > $R/quality.md 2>&1
C="dataset.cache_dir = '/tmp/cache'"
F=(--gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile --graph-min-bucket 128)
timeout 150 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin "${F[@]}" \
  --out $R/epoch_beauty > $R/epoch_beauty.log 2>&1; echo "epoch beauty rc $? $(date -u +%T)"
timeout 100 python experiments/bench/bench_epoch.py --gin gin/ml20m_like_flash_ce.gin "${F[@]}" \
  --out $R/epoch_ml > $R/epoch_ml.log 2>&1; echo "epoch ml rc $? $(date -u +%T)"
timeout 40 python kernels_bench/eager_point.py --out $R/eager > $R/eager.log 2>&1; echo "eager rc $? $(date -u +%T)"
timeout 100 python experiments/bench/bench_eval.py --preset beauty-like --cache-dir /tmp/cache --path streaming \
  --scorers model --splits test --sample-batches 2 --chunk-size 65536 --batch-size 16384 --out $R/eval \
  > $R/eval.log 2>&1; echo "eval rc $? $(date -u +%T)"
find /tmp/q2 -name '*.pt' -delete; find /tmp/q2 -path '*checkpoint*' -prune -exec rm -rf {} + 2>/dev/null
rm -f $R/*/results.csv; tar -czf $OUT/ll.tgz -C /tmp r2 q2
echo "== quality"; cat $R/quality.md
for f in $R/q_*.log; do echo "$(basename $f) $(grep -E '^rc |rror' $f | tail -n 2 | tr '\n' ' ' | cut -c1-200)"; done
echo "== epoch"; for f in beauty ml; do grep -h "^| [bm]" $R/epoch_$f.log | cut -d'|' -f2-7,10,11,15,16; done
echo "== eager"; grep "^| [fa]" $R/eager.log | cut -d'|' -f2-6
echo "== eval"; grep -E "^\| " $R/eval.log | tail -n 4 | cut -c1-220
pkill -P $K; kill $K
