#!/bin/bash
# Device call J (2026-11-29, second session, one H200): are graph-variant peaks inflated by
# earlier runs in the same bench_epoch process? ml20m-like CE, CCE, flash_ce in one process (as
# in call D), then CCE and flash_ce each in a process of its own; start_gib = memory still
# allocated when a run starts. One process at a time. Committed code.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl 2>/dev/null
R=/tmp/repo W=/tmp/call_j && rm -rf $R && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
B="timeout 150 python experiments/bench/bench_epoch.py --variants graph --epochs 1 --warmup-steps 30 --sample-steps 20"
$B --gin gin/ml20m_like_ce.gin --gin gin/ml20m_like_cce.gin --gin gin/ml20m_like_flash_ce.gin --out $W/together > $W/together.log 2>&1
$B --gin gin/ml20m_like_cce.gin --out $W/cce_alone > $W/cce_alone.log 2>&1
$B --gin gin/ml20m_like_flash_ce.gin --out $W/flash_ce_alone > $W/flash_ce_alone.log 2>&1
date -u
tar -czf $OUT/call_j.tar.gz -C $W .
for f in together cce_alone flash_ce_alone; do echo "== $f"; python -c "
import json; d=json.load(open('$W/$f/results.json'))
for r in d['rows']: print(r['loss'], r['variant'], round(r['epoch_s'],2), 'peak', round(r['peak_gib'],3), 'start', round(r['start_gib'],3))"; done
