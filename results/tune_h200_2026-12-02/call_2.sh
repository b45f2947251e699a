#!/bin/bash
# Device call 2 (2026-12-02, one H200): (1) `pytest -m gpu` on the merged issue-20 code, in the
# background; (2) the tuning studies on the real logs again, from scratch (call 1's trials ran
# in one process per worker and inherited earlier trials' device memory: see call_1/):
# {beauty5core, ml100k} x {ce, flash_ce, sampled_ce}, 60 counted trials each, every trial a
# fresh process capped at 7 GiB, 150 s of training, the study at 3,600 device-seconds; 18 trial
# processes share the GPU. A watchdog stops the studies at 470 s (SIGTERM: running trials end
# FAIL, not counted); call 3 continues them from the databases this call returns.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
R=/tmp/repo W=/tmp/w && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
mkdir -p /tmp/shared && cp -r .gpu/shared_data /tmp/shared/data  # = ../shared/data beside $R
[ -d results/tune_h200_2026-12-02/studies ] && cp -r results/tune_h200_2026-12-02/studies $W/  # continue
mkdir -p $W/studies
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
(timeout 400 python -m pytest -m gpu -q -p no:cacheprovider -x -W ignore > $W/pytest_gpu.log 2>&1; echo "rc $?" >> $W/pytest_gpu.log) &
for g in beauty5core_ce ml100k_ce; do  # prepare the data caches once, before studies race for them
  python experiments/run.py --gin gin/$g.gin --gin_bindings "train.epochs = 0" --out $W/warm_$g > /dev/null 2>&1
done
T="python experiments/tune.py --trials 60 --budget-s 3600 --trial-s 150 --gpu-memory-gib 7 --heartbeat-s 20"
G=(--gin_bindings "train.cuda_graph = True")
for d in beauty5core ml100k; do
  w=5; [ $d = ml100k ] && w=1
  for l in ce flash_ce sampled_ce; do
    space=gin/tune/sasrec.gin; [ $l = sampled_ce ] && space=gin/tune/sampled_ce.gin
    $T --gin gin/${d}_$l.gin --space $space "${G[@]}" --workers $w --out $W/studies/${d}_$l > $W/${d}_$l.log 2>&1 &
  done
done
( sleep 470; pkill -TERM -f experiments/tune.py ) > /dev/null 2>&1 &
dog=$!
wait $(jobs -p | grep -v "^$dog$"); kill $dog 2>/dev/null; date -u
for s in $W/studies/*; do python experiments/tune.py --status --out $s > /dev/null 2>&1; done
find $W/studies -name '*.pt' -delete
cp $W/pytest_gpu.log $W/studies/
tar -czf $OUT/studies.tar.gz -C $W studies
tail -15 $W/pytest_gpu.log
for f in $W/*.log; do echo "== $f"; grep -v "^trial\|^|\|^$\|^worker" $f | tail -2 | cut -c1-300; done
for s in $W/studies/*_*; do echo "== $(basename $s)"; head -3 $s/summary/study.md | tail -1 | cut -c1-330; sed -n '/Best trials/,/^$/p' $s/summary/study.md | sed -n 5p; done
