#!/bin/bash
# Not yet run. One H200: issue 21's "quality must not move" for this session's training changes
# (one gradient buffer for the item table, fresh gradients in the graphed step): the default
# flash_ce config of issue 19's finals (Beauty 5-core and ML-100K, seeds 0-2, test split; their
# config.gin as run then), all six runs side by side, compared with the finals' default rows
# and with call B's (session 3: Beauty 0.0514 ± 0.0004, ML-100K 0.0992 ± 0.0049). ~5 minutes.
set -u
. experiments/bench/device/setup.sh
W=/tmp/res && cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
S=results/tune_h200_2026-12-02/studies
for d in beauty5core ml100k; do  # each dataset's cache written once, before the seeds read it
  python experiments/run.py --gin $S/${d}_flash_ce/final/default_s0/config.gin --gin_bindings "train.epochs = 1" --out $W/warm_$d > $W/warm_$d.log 2>&1 &
done; wait
for d in beauty5core ml100k; do for s in 0 1 2; do
  (timeout 420 python experiments/run.py --gin $S/${d}_flash_ce/final/default_s$s/config.gin --out $W/quality/${d}_s$s > $W/q_${d}_s$s.log 2>&1; echo "rc $?" >> $W/q_${d}_s$s.log) &
done; done
wait; date -u
find $W/quality -name '*.pt' -delete; tar -czf $OUT/call_quality.tar.gz -C $W quality
python experiments/bench/device/quality_table.py $W/quality | tee $OUT/quality.md
