#!/bin/bash
# Device call D (2026-12-02, session 3, one H200, the last ~165 s of device time): ml20m-like
# flash_ce after the half-fill packing rule (PACK_MAX_FILL): bench_epoch, graph, alone on the GPU.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
mkdir -p /tmp/new /tmp/shared && tar -xzf .gpu/head.tar.gz -C /tmp/new && cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; date -u
timeout 55 python experiments/bench/bench_epoch.py --gin gin/ml20m_like_flash_ce.gin --gin_bindings "dataset.cache_dir = '/tmp/cache'" \
  --variants graph --epochs 1 --warmup-steps 30 --sample-steps 5 --out $OUT/epoch > $OUT/epoch.log 2>&1; echo "rc $?"
grep "^| " $OUT/epoch.log | cut -d'|' -f2-11 | head -3
