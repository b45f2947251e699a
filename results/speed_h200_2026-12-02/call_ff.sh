#!/bin/bash
# Call FF (eleventh session, 2026-12-03; ran on 7b75378, outputs in call_ff/, table in call_ff/output.txt).
# What happened: this script ran into the call's 600-s limit (its steps' timeouts added up to more
# than the call; the background kill at 575 s stopped the quality runs, which had just started
# after the warm-up, but the old tree's run started after it): its final tar and tables never
# ran and the call returned nothing. The machine stayed warm, so four short commands followed on
# it (below, after the script): they packed what the script had left in /tmp/res (the GPU tests,
# the new tree's profiled beauty-like run), ran the six quality runs (the caches from the warm-up
# were there), the old tree's beauty-like run, and the new tree's again, unprofiled, right after
# it (compiles cached by then: warm-up 15 s). Same machine, 13:08-13:22 UTC.
# The session's two earlier tries (EE: windows before/after; DD: quality) ran every job against
# a missing gin-config (a cp311 sqlalchemy wheel was refused and took the whole install with it;
# setup.sh now stops a call there), so this one does both, in the device time left.
# new = HEAD: training (and evaluation) windows built by one Triton launch on CUDA
# (core/data/windows_kernel.py) instead of ~20 tensor ops, and the row-add's sort on int32 keys;
# old = 56bd1f8 (calls BB/CC's code: 2.27 s at min bucket 128 in BB).
# Why: BB's instrumented pass read 0.71 ms of device time for building a batch from an idle
# device and 0.96 ms of host time a step, against 0.80 ms of GPU time a step: host-bound.
# (1) GPU tests: the windows kernel (a training epoch on CUDA vs the CPU's), batching on CUDA,
#     the row-add kernel (int32 keys through add_rows_).
# (2) bench_epoch graph+compile, min bucket 128, beauty-like new (profiled). Predicted 1.95-2.1 s
#     (GPU-bound), host ms < 0.5.
# (3) quality: call T's six runs (Beauty 5-core and ML-100K finals' default flash_ce config, seeds
#     0-2, train.compile = True, graph_min_bucket = 128) side by side, no timing. Predicted: within
#     seed noise of call T's 0.0510 +- 0.0003 and 0.0954 +- 0.0024 (training is unchanged bit for
#     bit by this session's changes; the tenth session's changed the gradients to rounding).
# (4) last, time permitting: the old tree's beauty-like run, same settings (predicted ~2.27 s).
set -u
. experiments/bench/device/setup.sh
( sleep 575; pkill -f "pytest|bench_epoch|experiments/run.py" ) > /dev/null 2>&1 &
W=/tmp/res
cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
timeout 45 python -m pytest -q -p no:cacheprovider -W ignore -rfE --tb=short -m "gpu or not gpu" \
  tests/test_windows_kernel.py::test_training_batches_on_cuda_equal_the_cpus tests/test_data_batching.py -k cuda \
  > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
timeout 40 python -m pytest -q -p no:cacheprovider -W ignore -rfE --tb=short -m gpu tests/test_table_grad.py \
  >> $W/pytest.log 2>&1; echo "pytest table_grad rc $? $(date -u +%T)"
C="dataset.cache_dir = '/tmp/cache'"
F=(--gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile --graph-min-bucket 128)
timeout 150 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin "${F[@]}" \
  --profile-steps 20 --out $W/epoch_new > $W/epoch_new.log 2>&1; echo "epoch new rc $? $(date -u +%T)"
S=results/tune_h200_2026-12-02/studies
B=(--gin_bindings "train.compile = True" --gin_bindings "train.graph_min_bucket = 128")
for d in beauty5core ml100k; do  # each dataset's cache written once, before the seeds read it
  timeout 100 python experiments/run.py --gin $S/${d}_flash_ce/final/default_s0/config.gin --gin_bindings "train.epochs = 1" \
    --out $W/warm_$d > $W/warm_$d.log 2>&1 &
done; wait; echo "warm $(date -u +%T)"
for d in beauty5core ml100k; do for s in 0 1 2; do
  (timeout 170 python experiments/run.py --gin $S/${d}_flash_ce/final/default_s$s/config.gin "${B[@]}" \
     --out $W/quality/${d}_s$s > $W/q_${d}_s$s.log 2>&1; echo "rc $?" >> $W/q_${d}_s$s.log) &
done; done
wait; echo "quality $(date -u +%T)"
(cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 110 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin \
  "${F[@]}" --out $W/epoch_old > $W/epoch_old.log 2>&1; echo "epoch old rc $? $(date -u +%T)")
find $W -name '*.pt' -delete; find $W -path '*checkpoint*' -prune -exec rm -rf {} + 2>/dev/null
tar -czf $OUT/call_ff.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|FAILED|ERROR|Error" $W/pytest.log | tail -8 | cut -c1-300
echo "== epoch"; for f in new old; do grep -h "^| [bm]" $W/epoch_$f.log | cut -d'|' -f2-7,10,11,15,16; done
echo "== profile"; head -30 $W/epoch_new/profile.md 2>/dev/null | tail -27 | cut -c1-150
echo "== quality"; python experiments/bench/device/quality_table.py $W/quality 2>&1 | tail -12
for f in $W/q_*.log; do echo "$(basename $f) $(grep -E '^rc |rror' $f | tail -2 | tr '\n' ' ' | cut -c1-200)"; done

# --- the follow-up commands on the same warm machine, in order ---
# 1: ls /tmp/res; tar -czf $OUT/call_ff.tar.gz -C /tmp res; (the tables below)
# 2: cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new; W=/tmp/res2; mkdir -p $W
#    S=results/tune_h200_2026-12-02/studies
#    for d in beauty5core ml100k; do for s in 0 1 2; do (timeout 225 python experiments/run.py \
#      --gin $S/${d}_flash_ce/final/default_s$s/config.gin --gin_bindings "train.compile = True" \
#      --gin_bindings "train.graph_min_bucket = 128" --out $W/quality/${d}_s$s > $W/q_${d}_s$s.log 2>&1;
#      echo "rc $?" >> $W/q_${d}_s$s.log) & done; done; wait
#    python experiments/bench/device/quality_table.py $W/quality
# 3: cd /tmp/old && export PYTHONPATH=/tmp/site:/tmp/old; timeout 140 python experiments/bench/bench_epoch.py \
#      --gin gin/beauty_like_flash_ce.gin --gin_bindings "dataset.cache_dir = '/tmp/cache'" --epochs 1 \
#      --warmup-steps 40 --sample-steps 20 --variants graph+compile --graph-min-bucket 128 --out $OUT/epoch_old
# 4: the same from /tmp/new (PYTHONPATH=/tmp/site:/tmp/new), --out $OUT/epoch_new2
