#!/bin/bash
# Device call 5 (2026-12-02, one H200): (1) `pytest -m gpu` of this commit in the background
# (the issue-20 code's GPU suite; call 2 stopped it at 400 s); (2) the seed-scale question: one
# study per loss (ce, cce, flash_ce) on beauty-like (729,576 users, 207,649 items), space
# gin/tune/seed_scale.gin (2 epochs, validated once, no pruner), 8 counted trials each, 4 workers
# per study, 8 GiB per trial, all three side by side (equal budget; their epoch times include
# each other's load). The three studies draw the same start-up settings (same sampler seeds), so
# the first trials compare the losses on equal settings.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
R=/tmp/repo W=/tmp/w && mkdir -p $R $W/seed_scale && tar -xzf .gpu/head.tar.gz -C $R
mkdir -p /tmp/shared && cp -r .gpu/shared_data /tmp/shared/data  # = ../shared/data beside $R
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
(timeout 470 python -m pytest -m gpu -q -p no:cacheprovider -W ignore > $W/pytest_gpu.log 2>&1; echo "rc $?" >> $W/pytest_gpu.log) &
python experiments/run.py --gin gin/beauty_like_ce.gin --gin_bindings "train.epochs = 0" --out $W/warm > /dev/null 2>&1  # writes the data once
T="python experiments/tune.py --space gin/tune/seed_scale.gin --pruner none --trials 8 --budget-s 3600 --trial-s 150 --gpu-memory-gib 8 --heartbeat-s 20 --workers 4"
for l in ce cce flash_ce; do
  $T --gin gin/beauty_like_$l.gin --gin_bindings "train.cuda_graph = True" --out $W/seed_scale/beauty_like_$l > $W/seed_scale_$l.log 2>&1 &
done
( sleep 450; pkill -TERM -f experiments/tune.py ) > /dev/null 2>&1 &
dog=$!
wait $(jobs -p | grep -v "^$dog$"); kill $dog 2>/dev/null; date -u
for s in $W/seed_scale/*; do python experiments/tune.py --status --out $s > /dev/null 2>&1; done
find $W/seed_scale -name '*.pt' -delete
cp $W/pytest_gpu.log $W/seed_scale_*.log $W/seed_scale/
tar -czf $OUT/seed_scale.tar.gz -C $W seed_scale
grep -E "passed|failed|error|rc " $W/pytest_gpu.log | tail -5
for s in $W/seed_scale/*/; do echo "== $(basename $s)"; sed -n 3p $s/summary/study.md | cut -c1-200; sed -n '/^| trial/,/^$/p' $s/summary/study.md | head -8 | cut -c1-220; done
