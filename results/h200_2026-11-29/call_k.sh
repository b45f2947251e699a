#!/bin/bash
# Device call K (2026-11-29, second session, one H200): call J again after bench_epoch clears
# cuBLAS workspaces between runs: does start_gib fall to 0 and the peak of a run after others
# equal its peak alone? One process at a time. Committed code.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl 2>/dev/null
R=/tmp/repo W=/tmp/call_k && rm -rf $R && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
B="timeout 150 python experiments/bench/bench_epoch.py --variants graph --epochs 1 --warmup-steps 30 --sample-steps 20"
$B --gin gin/ml20m_like_ce.gin --gin gin/ml20m_like_cce.gin --gin gin/ml20m_like_flash_ce.gin --out $W/together > $W/together.log 2>&1
$B --gin gin/ml20m_like_cce.gin --out $W/cce_alone > $W/cce_alone.log 2>&1
$B --gin gin/ml20m_like_flash_ce.gin --out $W/flash_ce_alone > $W/flash_ce_alone.log 2>&1
date -u
tar -czf $OUT/call_k.tar.gz -C $W .
for f in together cce_alone flash_ce_alone; do echo "== $f"; python -c "
import json; d=json.load(open('$W/$f/results.json'))
for r in d['rows']: print(r['loss'], r['variant'], round(r['epoch_s'],2), 'peak', round(r['peak_gib'],3), 'start', round(r['start_gib'],3))"; done
