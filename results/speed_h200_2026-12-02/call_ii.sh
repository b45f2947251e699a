#!/bin/bash
# ran on f9291d0; outputs in call_ii/. It ran into the 600-s limit and printed nothing: the epoch (1.87 s, 0.676 ms of GPU a step) came back in call_ii/epoch_new.log and profile.md; the six quality runs, started at 15:51:04 after warm-ups whose logs did not come back, logged no epoch before they were killed (thought then to be a cold compile of every bucket in six processes at once; found in call KK: the script's plain `wait` after the warm-ups also waited for the background killer, so the runs started only when it fired at 575 s, at 15:51:04, seconds before the call's end; FF's script had the same bug), so the quality table, the GPU tests and the ml20m-like run never ran.
# Call II (twelfth session, 2026-12-03). new = HEAD: call HH's code with inductor's combo_kernels
# on in the compiled body (core.training.step.INDUCTOR_OPTIONS; HH timed it through
# with_inductor.py: 1.98 -> 1.86 s).
# (1) bench_epoch beauty-like graph+compile, min bucket 128, profiled. Predicted ~1.86 s, ~99
#     device activities a step.
# (2) quality: call FF's six runs (Beauty 5-core and ML-100K finals' default flash_ce config,
#     seeds 0-2, train.compile = True, graph_min_bucket = 128) side by side, no timing. The scan
#     row-add sums repeated ids' rows in other groupings than the sort (fp32 rounding), combo
#     kernels may reduce in other orders: predicted within seed noise of FF's 0.0513 +- 0.0001
#     and 0.0954 +- 0.0023.
# (3) GPU tests: the graphed step (compiled epochs follow the eager ones) and the row-add.
# (4) ml20m-like, same variant (predicted <= 0.6 s: Z's 0.59 s; it sorts: 12,800 ids).
set -u
. experiments/bench/device/setup.sh
( sleep 575; pkill -f "pytest|bench_epoch|experiments/run.py" ) > /dev/null 2>&1 &
cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
C="dataset.cache_dir = '/tmp/cache'"
F=(--gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile --graph-min-bucket 128)
timeout 130 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin \
  "${F[@]}" --profile-steps 20 --out $W/epoch_new > $W/epoch_new.log 2>&1; echo "epoch new rc $? $(date -u +%T)"
S=results/tune_h200_2026-12-02/studies
B=(--gin_bindings "train.compile = True" --gin_bindings "train.graph_min_bucket = 128")
for d in beauty5core ml100k; do  # each dataset's cache written once, before the seeds read it
  timeout 90 python experiments/run.py --gin $S/${d}_flash_ce/final/default_s0/config.gin --gin_bindings "train.epochs = 1" \
    --out /tmp/warm_$d > /tmp/warm_$d.log 2>&1 &
done; wait; echo "warm $(date -u +%T)"
for d in beauty5core ml100k; do for s in 0 1 2; do
  (timeout 200 python experiments/run.py --gin $S/${d}_flash_ce/final/default_s$s/config.gin "${B[@]}" \
     --out /tmp/quality/${d}_s$s > $W/q_${d}_s$s.log 2>&1; echo "rc $?" >> $W/q_${d}_s$s.log) &
done; done
wait; echo "quality $(date -u +%T)"
python experiments/bench/device/quality_table.py /tmp/quality > $W/quality.md 2>&1
timeout 110 python -m pytest -q -p no:cacheprovider -W ignore -rfE --tb=short -m gpu tests/test_graph_step.py tests/test_table_grad.py \
  > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
timeout 70 python experiments/bench/bench_epoch.py --gin gin/ml20m_like_flash_ce.gin "${F[@]}" --out $W/epoch_ml > $W/epoch_ml.log 2>&1
echo "epoch ml rc $? $(date -u +%T)"
echo "== epoch"; for f in new ml; do echo "$f $(grep -h '^| [bm]' $W/epoch_$f.log | cut -d'|' -f2,5-7,10,11,15,16)"; done
echo "== profile"; head -24 $W/epoch_new/profile.md | tail -20 | cut -c1-110
python3 -c "
import json,sys
r = json.load(open(sys.argv[1])); print('launches', [x.get('profile', {}).get('launches') for x in r['rows']])" $W/epoch_new/results.json
echo "== quality"; cat $W/quality.md
for f in $W/q_*.log; do echo "$(basename $f) $(grep -E '^rc |rror' $f | tail -2 | tr '\n' ' ' | cut -c1-200)"; done
echo "== pytest"; grep -E "passed|failed|FAILED|ERROR|Error" $W/pytest.log | tail -8 | cut -c1-300
rm -f $W/*/results.md $W/*/results.csv; cd $OUT && tar -czf res.tgz res && rm -rf res
