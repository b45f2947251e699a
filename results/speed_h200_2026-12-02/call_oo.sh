#!/bin/bash
# Call OO: one command on call NN's warm machine (ran on d622673, 18:02-18:04 UTC, 113 s), each run alone on the GPU;
# logs in call_oo/. The beauty-like fastest variant at larger minimum buckets: is there one that meets
# the 2.0-s target without the min-bucket-128 variant's peak (0.60 GiB, above the 0.47)?
# Predicted: between LL's 1.88 s / 0.60 GiB (128) and MM's 2.00 s / 0.36 GiB (default, 1,024).
. experiments/bench/device/setup.sh >/dev/null 2>&1; cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
F=(--gin gin/beauty_like_flash_ce.gin --gin_bindings "dataset.cache_dir = '/tmp/cache'" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile)
for b in 256 512; do timeout 95 python experiments/bench/bench_epoch.py "${F[@]}" --graph-min-bucket $b --out /tmp/b$b > $OUT/bucket_$b.log 2>&1
  echo "bucket $b rc $? $(date -u +%T)"; done
grep -h "^| beauty" $OUT/bucket_*.log | cut -d'|' -f2-7,10,11,15,16
