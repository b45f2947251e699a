#!/bin/bash
# Device call 4 (session 2 of 2026-12-02, one H200; call 3 returned nothing): continue call 2's
# six studies (databases in studies/) to 60 counted trials (Beauty 5-core 3 workers, ML-100K 5
# workers per study, 24 trial processes side by side, the same 7 GiB cap per trial), and as soon
# as a study has its 60 it runs --final: one process per seed (best setting, then the default),
# side by side with whatever else runs (epoch times of finals are NOT comparable with a process
# alone; metrics and peak memory are). A watchdog stops everything at 470 s; finals are
# resumable (a finished seed's run folder is kept), so a later call finishes what is left.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
R=/tmp/repo W=/tmp/w && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
mkdir -p /tmp/shared && cp -r .gpu/shared_data /tmp/shared/data  # = ../shared/data beside $R
cp -r results/tune_h200_2026-12-02/studies $W/ && rm -f $W/studies/pytest_gpu.log
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
t0=$(date +%s)
for g in beauty5core_ce ml100k_ce; do  # data caches once, before the studies race for them
  python experiments/run.py --gin gin/$g.gin --gin_bindings "train.epochs = 0" --out $W/warm_$g > /dev/null 2>&1
done
T="python experiments/tune.py --trials 60 --budget-s 3600 --trial-s 150 --gpu-memory-gib 7 --heartbeat-s 20"
pipe() {  # study $1 (dataset_loss) with $2 workers to 60 trials, then its finals, seeds side by side
  local s=$W/studies/$1 space=gin/tune/sasrec.gin
  [[ $1 == *sampled_ce ]] && space=gin/tune/sampled_ce.gin
  $T --gin gin/$1.gin --space $space --gin_bindings "train.cuda_graph = True" --workers $2 --out $s > $W/$1.log 2>&1 || return
  echo "$1: 60 trials at $(( $(date +%s) - t0 )) s"
  for seed in 0 1 2; do python experiments/tune.py --final --out $s --seeds $seed > $W/final_$1_$seed.log 2>&1 & done
  wait  # aggregate (trains nothing) only where all six runs finished: the watchdog may have struck
  [ $(ls $s/final/*/metrics.json 2>/dev/null | wc -l) -eq 6 ] && python experiments/tune.py --final --out $s \
    > $W/final_$1.log 2>&1 && echo "$1: finals done at $(( $(date +%s) - t0 )) s"
}
for d in beauty5core ml100k; do
  w=3; [ $d = ml100k ] && w=5
  for l in ce flash_ce sampled_ce; do pipe ${d}_$l $w & done
done
( sleep 470; pkill -TERM -f experiments/tune.py ) > /dev/null 2>&1 &
dog=$!
wait $(jobs -p | grep -v "^$dog$"); kill $dog 2>/dev/null; date -u
for s in $W/studies/*; do python experiments/tune.py --status --out $s > /dev/null 2>&1; done
find $W/studies -name '*.pt' -delete
tar -czf $OUT/studies.tar.gz -C $W studies
tar -czf $OUT/logs.tar.gz -C $W $(cd $W && ls *.log)
for s in $W/studies/*; do echo "== $(basename $s)"; head -3 $s/summary/study.md | tail -1 | cut -c1-160; ls $s/final 2>/dev/null | tr '\n' ' '; echo; [ -f $s/final.md ] && sed -n '/^| /p' $s/final.md | cut -c1-200; done
