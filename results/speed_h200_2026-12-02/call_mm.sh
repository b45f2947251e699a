#!/bin/bash
# Call MM: two commands on call LL's warm machine (ran on 4632737, 17:50-17:54 UTC), each process alone on the GPU;
# outputs in call_mm/ (def_*: the first command; losses.txt: the second's table).
# (1) The same epochs as LL at the default graph buckets (no --graph-min-bucket), the variant whose
#     peak memory is below the 0.47 GiB: beauty-like 2.00 s (0.36 GiB), ml20m-like 0.54 s.
# (2) flash_ce, CCE and CE, graph+compile at the default buckets, both presets (the issue asks CE and
#     CCE in the same table). Its first run (beauty-like flash_ce) failed before starting: /tmp/mm did
#     not exist yet when its log was opened (the `|| mkdir -p` came too late); (1) has that row.
. experiments/bench/device/setup.sh >/dev/null 2>&1; cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
F=(--gin_bindings "dataset.cache_dir = '/tmp/cache'" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile)
# (1)
for g in beauty ml20m; do timeout 140 python experiments/bench/bench_epoch.py --gin gin/${g}_like_flash_ce.gin "${F[@]}" \
  --out $OUT/def_$g > $OUT/def_$g.log 2>&1; echo "$g rc $?"; done; rm -f $OUT/*/results.csv
for g in beauty ml20m; do grep -h "^| [bm]" $OUT/def_$g.log | cut -d'|' -f2-7,10,11,15,16; done
# (2)
( sleep 330; pkill -f bench_epoch ) >/dev/null 2>&1 &
for g in beauty ml20m; do for l in flash_ce cce ce; do timeout 75 python experiments/bench/bench_epoch.py --gin gin/${g}_like_$l.gin \
  "${F[@]}" --out /tmp/mm/${g}_$l > /tmp/mm/${g}_$l.log 2>&1 || mkdir -p /tmp/mm; echo "$g $l rc $? $(date -u +%T)"; done; done
for g in beauty ml20m; do for l in flash_ce cce ce; do grep -h "^| [bm]" /tmp/mm/${g}_$l.log | cut -d'|' -f2-7,10,11,15,16; done; done | tee $OUT/losses.txt
