#!/bin/bash
# Device call F (2026-11-29, second session, one H200): (1) the GPU tests of the committed code;
# (2) beside them, the noise floor of the one-GPU distributed check of call E: the same
# 1-process fp32 run twice, once compiled (same math, other summation order), catalog-parallel
# fp32 again, data-parallel bf16; (3) bench_epoch under torchrun, items-10m on 2
# catalog-parallel ranks (per-rank peaks in the bench's own table). Timings are not comparable
# here (everything shares the GPU); losses, metrics and peaks are. Committed code, as in call D.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl 2>/dev/null
R=/tmp/repo W=/tmp/call_f && rm -rf $R && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
mkdir -p /tmp/shared && cp -r .gpu/shared_data /tmp/shared/data  # = ../shared/data beside $R
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
T="timeout 240 python -m pytest -m gpu -q -p no:cacheprovider -rfE"
$T tests/test_losses_agreement.py -k flash > $W/pytest_flash.log 2>&1 &
$T tests/test_losses_agreement.py -k "not flash" > $W/pytest_agreement.log 2>&1 &
$T --ignore=tests/test_losses_agreement.py tests > $W/pytest_rest.log 2>&1 &
(
  D=(--gin_bindings "train.epochs = 1" --gin_bindings "SASRec.dropout = 0.0" --gin_bindings "train.show_progress = False")
  B=(--gin gin/beauty_like_ce.gin --gin_bindings "dataset.synthetic_overrides = {'n_users': 50000}")
  F=(--gin_bindings "train.amp = False")
  CP=(--gin_bindings "train.catalog_parallel = True")
  P="timeout 90 python experiments/run.py"
  T2="timeout 150 torchrun --standalone --nproc-per-node 2 experiments/run.py"
  $P "${B[@]}" "${D[@]}" "${F[@]}" --out $W/dist/beauty1_fp32_a > $W/dist_beauty1_fp32_a.log 2>&1
  $P "${B[@]}" "${D[@]}" "${F[@]}" --out $W/dist/beauty1_fp32_b > $W/dist_beauty1_fp32_b.log 2>&1
  $P "${B[@]}" "${D[@]}" "${F[@]}" --gin_bindings "train.compile = 'default'" --out $W/dist/beauty1_fp32_compiled > $W/dist_beauty1_fp32_compiled.log 2>&1
  $T2 "${B[@]}" "${D[@]}" "${F[@]}" "${CP[@]}" --out $W/dist/beauty2cp_fp32_b > $W/dist_beauty2cp_fp32_b.log 2>&1
  $T2 "${B[@]}" "${D[@]}" --out $W/dist/beauty2dp > $W/dist_beauty2dp.log 2>&1
  timeout 150 torchrun --standalone --nproc-per-node 2 experiments/bench/bench_epoch.py --gin gin/items_10m_cce.gin \
    --gin_bindings "cce.filter_eps = None" --gin_bindings "train.catalog_parallel = True" \
    --gin_bindings "dataset.synthetic_overrides = {'n_users': 4000}" \
    --variants static --epochs 1 --warmup-steps 3 --sample-steps 3 --out $W/bench_items10m_k2cp > $W/bench_items10m_k2cp.log 2>&1
) &
( sleep 500; pkill -f experiments/ ; pkill -f torchrun; pkill -f pytest ) > /dev/null 2>&1 &
dog=$!
wait $(jobs -p | grep -v "^$dog$"); kill $dog 2>/dev/null; date -u
find $W -name '*.pt*' -delete
tar -czf $OUT/call_f.tar.gz -C $W .
for f in $W/dist/*/metrics.json; do python -c "import json; m=json.load(open('$f')); h=[__import__('json').loads(l) for l in open('$f'.replace('metrics.json','history.jsonl'))]; print('$f'.split('/')[-2], m['world_size'], m['env'].get('dtype'), round(h[0]['train_loss'],5), round(m['test']['NDCG@10'],5), round(m['test']['HitRate@10'],5), m.get('peak_memory_gib_per_rank'))"; done
grep "^| items" $W/bench_items10m_k2cp/results.md | cut -d'|' -f2-12,17-22; tail -3 $W/bench_items10m_k2cp.log | cut -c1-200
for f in $W/pytest_*.log; do echo "== $f"; tail -4 $f; done
