#!/bin/bash
# Device call L (2026-11-29, second session, one H200): call D again with bench_epoch clearing cuBLAS workspaces between runs (call D's peaks counted up to 0.45 GiB left by earlier runs of its process): the epoch table of the sampled-softmax
# variants next to CE, CCE and flash_ce on the seed-scale presets, one process alone on the GPU
# (timings comparable within this call only). Committed code: .gpu/head.tar.gz = `git archive`
# of the commit in .gpu/HEAD. Everything comes back as $OUT/call_l.tar.gz.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
R=/tmp/repo W=/tmp/call_l && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
B="python experiments/bench/bench_epoch.py --variants graph --epochs 1 --warmup-steps 30 --sample-steps 20"
G=""; for d in beauty_like ml20m_like; do for l in ce cce flash_ce; do G="$G --gin gin/${d}_$l.gin"; done; done
timeout 200 $B $G --budget-s 150 --out $W/full > $W/full.log 2>&1; echo "full rc=$?"
for k in 256 3000; do for s in uniform popularity; do
  timeout 100 $B --gin gin/beauty_like_sampled_ce.gin --gin gin/ml20m_like_sampled_ce.gin \
    --gin_bindings "sampled_ce.n_negatives = $k" --gin_bindings "sampled_ce.sampler = '$s'" \
    --budget-s 60 --out $W/sampled_${k}_$s > $W/sampled_${k}_$s.log 2>&1; echo "sampled $k $s rc=$?"
done; done
date -u
tar -czf $OUT/call_l.tar.gz -C $W .
for f in $W/*/results.md; do grep "^| [bm]" $f | cut -d'|' -f2-10; done
