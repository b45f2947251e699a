#!/bin/bash
# Call AA (tenth session, 2026-12-03; ran on d5a83f8, outputs in call_aa/, table in call_aa/output.txt; 449 s). new = HEAD: flash_ce's dE from the forward (call Z) with
# lean exponents (the weight and ignored rows folded into the exponent), the tied item table
# under the compiled graphed body with the lookup's row gradients added in place
# (core.table_grad.add_rows_); old = 8014f05 (the session's start: 2.62-2.63 s in calls H, K).
# (1) GPU tests: the row-add kernel against float64 with its mutants, the tied table with
#     flash_ce, flash_ce and its skip switch, the graphed step.
# (2) tune_flash_ce at D = 64 (fwd and dc, lean kernels), then the breakdown.
#     Predicted: fwd <= 0.108 ms, dC < 0.111 ms at 560 x 207,649.
# (3) bench_epoch graph+compile, min bucket 128, beauty-like new (tuned tiles, profiled) and old,
#     ml20m-like new. Predicted: beauty-like ~2.1-2.2 s new vs ~2.6 old, profile without
#     memcpy32_post / CUDAFunctor_add / FillFunctor / embedding_dense_backward over the table;
#     peak below call Z's 0.60 GiB; ml20m-like ~0.55-0.59 s.
# (4) eager_point 560 x 207,649 (tuned): ~0.6 ms (call Z 0.611).
set -u
. experiments/bench/device/setup.sh
( sleep 560; pkill -f "pytest|tune_flash_ce|bench_epoch|eager_point" ) > /dev/null 2>&1 &
W=/tmp/res && T=experiments/bench/device/with_tiles.py
cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
timeout 170 python -m pytest -m gpu -q -p no:cacheprovider -W ignore -rfE --tb=short tests/test_table_grad.py \
  tests/test_tied_table.py tests/test_flash_ce.py tests/test_flash_ce_skip.py tests/test_graph_step.py \
  > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
timeout 100 python kernels_bench/tune_flash_ce.py --dims 64 --budget-s 60 --out $W/tune > $W/tune.log 2>&1
echo "tune rc $? $(date -u +%T)"
[ -f $W/tune/best.json ] || echo '{}' > $W/tune/best.json
C="dataset.cache_dir = '/tmp/cache'"
F=(--gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile --graph-min-bucket 128)
timeout 90 python $T $W/tune/best.json experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin "${F[@]}" \
  --profile-steps 20 --out $W/epoch_new > $W/epoch_new.log 2>&1; echo "epoch new rc $? $(date -u +%T)"
(cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 80 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin \
  "${F[@]}" --out $W/epoch_old > $W/epoch_old.log 2>&1; echo "epoch old rc $? $(date -u +%T)")
timeout 70 python $T $W/tune/best.json experiments/bench/bench_epoch.py --gin gin/ml20m_like_flash_ce.gin "${F[@]}" \
  --out $W/epoch_ml > $W/epoch_ml.log 2>&1; echo "epoch ml rc $? $(date -u +%T)"
timeout 30 python $T $W/tune/best.json kernels_bench/eager_point.py --out $W/eager > $W/eager.log 2>&1; echo "eager rc $? $(date -u +%T)"
tar -czf $OUT/call_aa.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|FAILED|ERROR" $W/pytest.log | tail -8 | cut -c1-300
echo "== tune"; grep -E "^D=|compiled" $W/tune.log | cut -c1-200
echo "== breakdown"; grep "^N=" $W/tune.log | cut -c1-200
echo "== epoch"; for f in new old ml; do grep -h "^| [bm]" $W/epoch_$f.log | cut -d'|' -f2-6,10,15,16; done
echo "== profile"; head -26 $W/epoch_new/profile.md 2>/dev/null | tail -23 | cut -c1-150
echo "== eager"; grep "^| [fa]" $W/eager.log | cut -d'|' -f2-6
