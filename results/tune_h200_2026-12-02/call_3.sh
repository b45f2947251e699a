#!/bin/bash
# Device call 3 (2026-12-02, one H200): continue call 2's studies (databases in studies/) with
# more workers (beauty5core 4, ml100k 4 per study) until 200 s, then --final for every study:
# the best trial's setting and the default config, seeds 0, 1, 2, one process per (study, seed),
# all side by side (their epoch times are NOT comparable with a process alone; metrics and
# peak memory are), stopped at 400 s. Same commit as call 2 plus the final's counted_trials.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
R=/tmp/repo W=/tmp/w && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
mkdir -p /tmp/shared && cp -r .gpu/shared_data /tmp/shared/data  # = ../shared/data beside $R
cp -r results/tune_h200_2026-12-02/studies $W/ && rm -f $W/studies/pytest_gpu.log
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
for g in beauty5core_ce ml100k_ce; do
  python experiments/run.py --gin gin/$g.gin --gin_bindings "train.epochs = 0" --out $W/warm_$g > /dev/null 2>&1
done
T="python experiments/tune.py --trials 60 --budget-s 3600 --trial-s 150 --gpu-memory-gib 7 --heartbeat-s 20"
G=(--gin_bindings "train.cuda_graph = True")
for d in beauty5core ml100k; do
  for l in ce flash_ce sampled_ce; do
    space=gin/tune/sasrec.gin; [ $l = sampled_ce ] && space=gin/tune/sampled_ce.gin
    $T --gin gin/${d}_$l.gin --space $space "${G[@]}" --workers 4 --out $W/studies/${d}_$l > $W/${d}_$l.log 2>&1 &
  done
done
( sleep 200; pkill -TERM -f experiments/tune.py ) > /dev/null 2>&1 &
dog=$!
wait $(jobs -p | grep -v "^$dog$"); kill $dog 2>/dev/null; date -u
for s in $W/studies/*; do for seed in 0 1 2; do
  python experiments/tune.py --final --out $s --seeds $seed > $W/final_$(basename $s)_$seed.log 2>&1 &
done; done
( sleep 170; pkill -TERM -f experiments/tune.py ) > /dev/null 2>&1 &
dog=$!
wait $(jobs -p | grep -v "^$dog$"); kill $dog 2>/dev/null; date -u
for s in $W/studies/*; do  # aggregate where every seed finished (no training here)
  [ $(ls $s/final/*/metrics.json 2>/dev/null | wc -l) -eq 6 ] && python experiments/tune.py --final --out $s > /dev/null 2>&1
  python experiments/tune.py --status --out $s > /dev/null 2>&1
done
find $W/studies -name '*.pt' -delete
tar -czf $OUT/studies.tar.gz -C $W studies
for s in $W/studies/*; do echo "== $(basename $s)"; head -3 $s/summary/study.md | tail -1 | cut -c1-200; ls $s/final 2>/dev/null | tr '\n' ' '; echo; [ -f $s/final.md ] && sed -n 3,6p $s/final.md; done
