#!/bin/bash
# Device call E (2026-11-29, second session, one H200): (1) quality of the seed-scale presets,
# every loss incl. sampled softmax (study plans synthetic + sampled, 2 epochs, compiled step;
# several processes side by side: their epoch times are NOT comparable, their metrics and peak
# memory are; times come from call D); (2) the distributed checks on one GPU (2 ranks share it
# over gloo): catalog-parallel and data-parallel `ce` against one process, bf16 and fp32, and
# items-10m on 2 catalog-parallel ranks with every rank's peak. Committed code, as in call D.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
R=/tmp/repo W=/tmp/call_e && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
# Build the synthetic data caches once, so parallel runs do not race to write them.
for g in beauty_like_ce ml20m_like_ce; do
  python experiments/run.py --gin gin/$g.gin --gin_bindings "train.epochs = 0" --out $W/warm_$g > /dev/null 2>&1
done
date -u
S="python experiments/bench/study.py synthetic sampled --epochs 2 --bind train.compile='reduce-overhead' --budget-s 380 --deadline-s 440 --drop-checkpoints"
$S --only 'beauty_like_ce_s0,beauty_like_flash_ce_s0,beauty_like_cce_s0' --out $W/study/l1 > $W/l1.log 2>&1 &
$S --only 'beauty_like_sampled_ce_256_*,beauty_like_cce_exact_s0' --out $W/study/l2 > $W/l2.log 2>&1 &
$S --only 'beauty_like_sampled_ce_3000_*' --out $W/study/l3 > $W/l3.log 2>&1 &
$S --only 'ml20m_like_sampled_ce_*' --out $W/study/l4 > $W/l4.log 2>&1 &
$S --only 'ml20m_like_ce_s0,ml20m_like_flash_ce_s0,ml20m_like_cce_s0,ml20m_like_cce_exact_s0' --out $W/study/l5 > $W/l5.log 2>&1 &
(
  D=(--gin_bindings "train.epochs = 1" --gin_bindings "SASRec.dropout = 0.0" --gin_bindings "train.show_progress = False")
  CP=(--gin_bindings "train.catalog_parallel = True")
  T="timeout 150 torchrun --standalone --nproc-per-node 2 experiments/run.py"
  I=(--gin gin/items_10m_cce.gin --gin_bindings "cce.filter_eps = None" --gin_bindings "dataset.synthetic_overrides = {'n_users': 4000}")
  B=(--gin gin/beauty_like_ce.gin --gin_bindings "dataset.synthetic_overrides = {'n_users': 50000}")
  F=(--gin_bindings "train.amp = False")
  timeout 90 python experiments/run.py "${B[@]}" "${D[@]}" --out $W/dist/beauty1 > $W/dist_beauty1.log 2>&1
  $T "${B[@]}" "${D[@]}" "${CP[@]}" --out $W/dist/beauty2cp > $W/dist_beauty2cp.log 2>&1
  timeout 90 python experiments/run.py "${B[@]}" "${D[@]}" "${F[@]}" --out $W/dist/beauty1_fp32 > $W/dist_beauty1_fp32.log 2>&1
  $T "${B[@]}" "${D[@]}" "${F[@]}" "${CP[@]}" --out $W/dist/beauty2cp_fp32 > $W/dist_beauty2cp_fp32.log 2>&1
  I=(--gin gin/items_10m_cce.gin --gin_bindings "cce.filter_eps = None" --gin_bindings "dataset.synthetic_overrides = {'n_users': 4000}")
  $T "${I[@]}" "${D[@]}" "${CP[@]}" --out $W/dist/items2cp > $W/dist_items2cp.log 2>&1
  timeout 80 python experiments/run.py "${I[@]}" "${D[@]}" --out $W/dist/items1 > $W/dist_items1.log 2>&1
  $T "${B[@]}" "${D[@]}" "${F[@]}" --out $W/dist/beauty2dp_fp32 > $W/dist_beauty2dp_fp32.log 2>&1
) &
# A watchdog: whatever still runs at 470 s is stopped, so the archive below is always written.
( sleep 470; pkill -f experiments/ ; pkill -f torchrun ) > /dev/null 2>&1 &
dog=$!
wait $(jobs -p | grep -v "^$dog$"); kill $dog 2>/dev/null; date -u
find $W -name '*.pt*' -delete
tar -czf $OUT/call_e.tar.gz -C $W --exclude='warm_*' .
grep -h "study:" $W/l*.log
for f in $W/dist/*/metrics.json; do python -c "import json; m=json.load(open('$f')); print('$f'.split('/')[-2], m['loss'], m['world_size'], m['env'].get('dtype'), round(m['first_epoch_time_s'],1), m['test']['NDCG@10'], m['test']['HitRate@10'], m['peak_memory_gib'], m.get('peak_memory_gib_per_rank'))"; done
for f in $W/dist_*.log; do echo "== $f"; grep -v "^\s\|^W1" $f | tail -2 | cut -c1-200; done
