#!/bin/bash
# Call EE (eleventh session, 2026-12-03; ran on 7b75378, outputs in call_ee/, table in call_ee/output.txt).
# new = HEAD: training (and evaluation) windows built by one Triton launch on CUDA
# (core/data/windows_kernel.py) instead of ~20 tensor ops, and the row-add's sort on int32 keys;
# old = 56bd1f8 (calls BB/CC's code: 2.27 s at min bucket 128 in BB).
# Why: BB's instrumented pass read 0.71 ms of device time for building a batch from an idle
# device (the host issuing its ~20 launches) and 0.96 ms of host time a step, against 0.80 ms
# of GPU time a step: the epoch (0.88 ms a step) was host-bound.
# (1) bench_epoch graph+compile, min bucket 128: beauty-like new (profiled), old; ml20m-like new.
#     Predicted: beauty-like new 1.95-2.1 s (GPU-bound: 0.80 ms of kernels less ~0.03 of eager
#     batch kernels and ~0.014 of sort, plus the gaps), old ~2.27 s; host ms new < 0.5;
#     ml20m-like new ~0.59 s (GPU-bound before and after).
# (2) GPU tests: the windows kernel (training epoch on CUDA vs CPU), batching on CUDA, the
#     row-add kernel (int32 keys through add_rows_), the graphed step and flash_ce's skip switch.
set -u
. experiments/bench/device/setup.sh
( sleep 570; pkill -f "pytest|bench_epoch" ) > /dev/null 2>&1 &
W=/tmp/res
cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
C="dataset.cache_dir = '/tmp/cache'"
F=(--gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile --graph-min-bucket 128)
timeout 170 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin "${F[@]}" \
  --profile-steps 20 --out $W/epoch_new > $W/epoch_new.log 2>&1; echo "epoch new rc $? $(date -u +%T)"
(cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 130 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin \
  "${F[@]}" --out $W/epoch_old > $W/epoch_old.log 2>&1; echo "epoch old rc $? $(date -u +%T)")
timeout 80 python experiments/bench/bench_epoch.py --gin gin/ml20m_like_flash_ce.gin "${F[@]}" \
  --out $W/epoch_ml > $W/epoch_ml.log 2>&1; echo "epoch ml rc $? $(date -u +%T)"
timeout 120 python -m pytest -m gpu -q -p no:cacheprovider -W ignore -rfE --tb=short tests/test_windows_kernel.py \
  tests/test_table_grad.py tests/test_graph_step.py tests/test_flash_ce_skip.py \
  > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
timeout 40 python -m pytest -q -p no:cacheprovider -W ignore -rfE --tb=short tests/test_data_batching.py -k cuda \
  >> $W/pytest.log 2>&1; echo "pytest batching rc $? $(date -u +%T)"
tar -czf $OUT/call_ee.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|FAILED|ERROR|Error" $W/pytest.log | tail -8 | cut -c1-300
echo "== epoch"; for f in new old ml; do grep -h "^| [bm]" $W/epoch_$f.log | cut -d'|' -f2-7,10,11,15,16; done
echo "== profile"; head -30 $W/epoch_new/profile.md 2>/dev/null | tail -27 | cut -c1-150
