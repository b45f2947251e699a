#!/bin/bash
# Device call C (2026-11-29, one H200): training quality (study runs to early stopping, several
# processes side by side: their epoch times are NOT comparable, their metrics are) and the
# distributed checks on one GPU (2 ranks share it over gloo). Committed code, as in call B.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
R=/tmp/repo W=/tmp/call_c && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
mkdir -p /tmp/shared && cp -r .gpu/shared_data /tmp/shared/data  # = ../shared/data beside $R
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
# Warm the prepared-data caches once, so parallel runs do not race to build them.
for g in beauty5core_ce ml100k_ce; do
  python experiments/run.py --gin gin/$g.gin --gin_bindings "train.epochs = 0" --out $W/warm_$g > /dev/null 2>&1
done
S="python experiments/bench/study.py --budget-s 290 --deadline-s 380 --drop-checkpoints"
$S real --only 'beauty5core_flash_ce_*' --out $W/study/flash_b > $W/s1.log 2>&1 &
$S real --only 'ml100k_flash_ce_*' --out $W/study/flash_m > $W/s2.log 2>&1 &
$S real --only 'beauty5core_ce_s*' --out $W/study/ce_b > $W/s3.log 2>&1 &
for v in 256_uniform 256_popularity 3000_uniform 3000_popularity; do
  $S sampled --only "beauty5core_sampled_ce_${v}_*" --out $W/study/sampled_b_$v > $W/s_b_$v.log 2>&1 &
done
for k in 256 3000; do
  $S sampled --only "ml100k_sampled_ce_${k}_*" --out $W/study/sampled_m_$k > $W/s_m_$k.log 2>&1 &
done
# Distributed on one GPU: 1 process vs 2 ranks with the catalog-parallel loss (dropout 0, 1 epoch).
D=(--gin_bindings "train.epochs = 1" --gin_bindings "SASRec.dropout = 0.0" --gin_bindings "train.show_progress = False")
(
  B=(--gin_bindings "dataset.synthetic_overrides = {'n_users': 50000}")
  timeout 90 python experiments/run.py --gin gin/beauty_like_cce_exact.gin "${D[@]}" "${B[@]}" --out $W/dist/beauty1 > $W/dist_b1.log 2>&1
  timeout 110 torchrun --standalone --nproc-per-node 2 experiments/run.py --gin gin/beauty_like_cce_exact.gin "${D[@]}" "${B[@]}" \
    --gin_bindings "train.catalog_parallel = True" --out $W/dist/beauty2cp > $W/dist_b2.log 2>&1
  I=(--gin_bindings "dataset.synthetic_overrides = {'n_users': 4000}")
  timeout 90 python experiments/run.py --gin gin/items_10m_cce.gin "${D[@]}" "${I[@]}" --gin_bindings "cce.filter_eps = None" \
    --out $W/dist/items1 > $W/dist_i1.log 2>&1
  timeout 110 torchrun --standalone --nproc-per-node 2 experiments/run.py --gin gin/items_10m_cce.gin "${D[@]}" "${I[@]}" \
    --gin_bindings "cce.filter_eps = None" --gin_bindings "train.catalog_parallel = True" --out $W/dist/items2cp > $W/dist_i2.log 2>&1
) &
# A watchdog: whatever still runs at 400 s is stopped, so the archive below is always written.
( sleep 400; pkill -f experiments/ ; pkill -f torchrun ) > /dev/null 2>&1 &
dog=$!
wait $(jobs -p | grep -v "^$dog$"); kill $dog 2>/dev/null; date -u
find $W -name '*.pt' -delete
tar -czf $OUT/call_c.tar.gz -C $W --exclude='warm_*' .
grep -h "study:" $W/s*.log
for f in $W/dist/*/metrics.json; do python -c "import json,sys; m=json.load(open('$f')); print('$f'.split('/')[-2], m['loss'], m['test']['NDCG@10'], m['test']['HitRate@10'], m['peak_memory_gib'], m.get('world_size'))"; done
for f in $W/dist_*.log; do echo "== $f"; tail -2 $f; done
