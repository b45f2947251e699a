#!/bin/bash
# Device call G (2026-11-29, second session, one H200): the noise floor of the one-GPU
# distributed check in bf16 (calls E and F measured it in fp32): the 1-process bf16 run again
# and compiled (same math, other kernels and rounding), data-parallel and catalog-parallel
# bf16 again. One run at a time. Committed code, as in call D.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl 2>/dev/null
R=/tmp/repo W=/tmp/call_g && rm -rf $R && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
mkdir -p /tmp/shared && cp -r .gpu/shared_data /tmp/shared/data  # = ../shared/data beside $R
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
D=(--gin_bindings "train.epochs = 1" --gin_bindings "SASRec.dropout = 0.0" --gin_bindings "train.show_progress = False")
B=(--gin gin/beauty_like_ce.gin --gin_bindings "dataset.synthetic_overrides = {'n_users': 50000}")
CP=(--gin_bindings "train.catalog_parallel = True")
P="timeout 90 python experiments/run.py"
T2="timeout 150 torchrun --standalone --nproc-per-node 2 experiments/run.py"
$P "${B[@]}" "${D[@]}" --out $W/dist/beauty1_b > $W/dist_beauty1_b.log 2>&1
$P "${B[@]}" "${D[@]}" --gin_bindings "train.compile = 'default'" --out $W/dist/beauty1_compiled > $W/dist_beauty1_compiled.log 2>&1
$T2 "${B[@]}" "${D[@]}" --out $W/dist/beauty2dp_b > $W/dist_beauty2dp_b.log 2>&1
$T2 "${B[@]}" "${D[@]}" "${CP[@]}" --out $W/dist/beauty2cp_b > $W/dist_beauty2cp_b.log 2>&1
date -u
find $W -name '*.pt*' -delete
tar -czf $OUT/call_g.tar.gz -C $W .
for f in $W/dist/*/metrics.json; do python -c "import json; m=json.load(open('$f')); h=[json.loads(l) for l in open('$f'.replace('metrics.json','history.jsonl'))]; print('$f'.split('/')[-2], m['world_size'], m['env'].get('dtype'), round(h[0]['train_loss'],5), round(m['test']['NDCG@10'],5), round(m['test']['HitRate@10'],5), m.get('peak_memory_gib_per_rank'))"; done
for f in $W/dist_*.log; do echo "== $f"; grep -v "^\s\|^W1" $f | tail -1 | cut -c1-200; done
