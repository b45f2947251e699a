#!/bin/bash
# Device call 6 (2026-12-02, one H200, alone on the GPU): issue 20's check that the layering
# changed no speed: bench_epoch of the commit before it (d81416d, "old") and of this commit
# ("new"), in turn old, new, old, new (ABAB: drift shows as a difference between the two runs
# of one commit), beauty-like x ce / cce / flash_ce, variant graph (train.cuda_graph), 30
# warm-up steps, 1 timed epoch; one data cache for both.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
mkdir -p /tmp/old /tmp/new /tmp/shared && tar -xzf .gpu/old.tar.gz -C /tmp/old && tar -xzf .gpu/head.tar.gz -C /tmp/new
cp -r .gpu/shared_data /tmp/shared/data
echo "new = $(cat .gpu/HEAD), old = d81416d"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
B=(--gin gin/beauty_like_ce.gin --gin gin/beauty_like_cce.gin --gin gin/beauty_like_flash_ce.gin
   --gin_bindings "dataset.cache_dir = '/tmp/cache'" --variants graph --epochs 1 --warmup-steps 30 --sample-steps 30)
for run in old_1 new_1 old_2 new_2; do
  cd /tmp/${run%_*} && PYTHONPATH=/tmp/site:/tmp/${run%_*} timeout 100 python experiments/bench/bench_epoch.py "${B[@]}" --budget-s 60 \
    --out /tmp/res/$run > /tmp/res_$run.log 2>&1; echo "$run rc $? at $(date -u +%T)"
done
cd /tmp/res && for r in *; do cp /tmp/res_$r.log $r/; done; find . -name '*.pt' -delete
tar -czf $OUT/bench_epoch.tar.gz -C /tmp res
for r in old_1 new_1 old_2 new_2; do echo "== $r"; grep "^| beauty" /tmp/res_$r.log | cut -d'|' -f2-8; done
