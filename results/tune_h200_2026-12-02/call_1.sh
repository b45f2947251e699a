#!/bin/bash
# Device call 1 (2026-12-02, one H200): the tuning studies on the real logs (issue 19).
# {beauty5core, ml100k} x {ce, flash_ce, sampled_ce, cce}, 60 counted trials each, every trial
# capped at 8 GiB of device memory, 150 s of training and the study at 3,600 device-seconds;
# all studies side by side (15 trial processes share the GPU: epoch times within this call are
# comparable to each other only loosely, metrics and memory are exact). A watchdog stops
# everything at 520 s (SIGTERM: running trials end FAIL, not counted); call 2 continues the
# same studies from the database this call returns. Runs the committed code (git archive).
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
R=/tmp/repo W=/tmp/w && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
mkdir -p /tmp/shared && cp -r .gpu/shared_data /tmp/shared/data  # = ../shared/data beside $R
[ -d results/tune_h200_2026-12-02/studies ] && cp -r results/tune_h200_2026-12-02/studies $W/  # continue
mkdir -p $W/studies
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
for g in beauty5core_ce ml100k_ce; do  # prepare the data caches once, before studies race for them
  python experiments/run.py --gin gin/$g.gin --gin_bindings "train.epochs = 0" --out $W/warm_$g > /dev/null 2>&1
done
T="python experiments/tune.py --trials 60 --budget-s 3600 --trial-s 150 --gpu-memory-gib 8 --heartbeat-s 20"
G=(--gin_bindings "train.cuda_graph = True")
for d in beauty5core ml100k; do
  w=3; [ $d = ml100k ] && w=1
  for l in ce flash_ce sampled_ce cce; do
    space=gin/tune/sasrec.gin; [ $l = sampled_ce ] && space=gin/tune/sampled_ce.gin
    ww=$w; [ $l = cce ] && [ $d = beauty5core ] && ww=2
    $T --gin gin/${d}_$l.gin --space $space "${G[@]}" --workers $ww --out $W/studies/${d}_$l > $W/${d}_$l.log 2>&1 &
  done
done
( sleep 520; pkill -TERM -f experiments/tune.py ) > /dev/null 2>&1 &
dog=$!
wait $(jobs -p | grep -v "^$dog$"); kill $dog 2>/dev/null; date -u
for s in $W/studies/*; do python experiments/tune.py --status --out $s > /dev/null 2>&1; done
find $W/studies -name '*.pt' -delete
tar -czf $OUT/studies.tar.gz -C $W studies
for f in $W/*.log; do echo "== $f"; grep -v "^trial\|^|\|^$" $f | tail -3 | cut -c1-300; done
for s in $W/studies/*; do echo "== $(basename $s)"; head -3 $s/summary/study.md | tail -1 | cut -c1-400; sed -n '/Best trials/,/^$/p' $s/summary/study.md | sed -n 5,6p; done
