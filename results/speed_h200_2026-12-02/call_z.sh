#!/bin/bash
# Call Z (tenth session, 2026-12-03; ran on 7f52ccc, outputs in call_z/, table in call_z/output.txt; 294 s). new = HEAD (c89b956: flash_ce's dE from the forward:
# softmax C computed with the LSE in one kernel, dE a merge), old = 8014f05 (the dE kernel that
# recomputed the logits). One H200, one process at a time.
# (1) GPU tests of flash_ce (float64 agreement at 560 x 50,000 and 1,000 x 20,729, bf16; every
#     broken kernel; the skip switch bit-identical with its mutants).
# (2) tune_flash_ce: the new forward kernel's tiles at D = 64 (few: N = 560, many: N = 12,800),
#     then the breakdown (each kernel, the whole loss eager and graphed), new and old trees.
#     Predicted: fwd ~0.15-0.18 ms at 560 x 207,649 (old lse 0.10-0.13), dE ~0.01 (old 0.13-0.17).
# (3) bench_epoch graph+compile, min bucket 128: beauty-like old / new (tuned tiles) ; ml20m-like new.
#     Predicted: beauty-like 2.62 -> ~2.30 s; ml20m-like 0.69 -> ~0.55 s.
# (4) eager_point 560 x 207,649 new (tuned): predicted <= 0.44 ms (call I).
set -u
. experiments/bench/device/setup.sh
( sleep 540; pkill -f "pytest|tune_flash_ce|bench_epoch|eager_point" ) > /dev/null 2>&1 &
W=/tmp/res && T=experiments/bench/device/with_tiles.py
cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
timeout 130 python -m pytest -m gpu -q -p no:cacheprovider -W ignore -rfE --tb=short tests/test_flash_ce.py \
  tests/test_flash_ce_skip.py > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
timeout 120 python kernels_bench/tune_flash_ce.py --dims 64 --kernels fwd --budget-s 60 --out $W/tune > $W/tune.log 2>&1
echo "tune rc $? $(date -u +%T)"
(cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 40 python kernels_bench/tune_flash_ce.py --no-tune --dims 64 \
  --out $W/tune_old > $W/tune_old.log 2>&1; echo "breakdown old rc $? $(date -u +%T)")
[ -f $W/tune/best.json ] || echo '{}' > $W/tune/best.json
C="dataset.cache_dir = '/tmp/cache'"
F=(--gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile --graph-min-bucket 128)
(cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 75 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin \
  "${F[@]}" --out $W/epoch_old > $W/epoch_old.log 2>&1; echo "epoch old rc $? $(date -u +%T)")
timeout 75 python $T $W/tune/best.json experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin "${F[@]}" \
  --profile-steps 20 --out $W/epoch_new > $W/epoch_new.log 2>&1; echo "epoch new rc $? $(date -u +%T)"
timeout 60 python $T $W/tune/best.json experiments/bench/bench_epoch.py --gin gin/ml20m_like_flash_ce.gin "${F[@]}" \
  --out $W/epoch_ml > $W/epoch_ml.log 2>&1; echo "epoch ml rc $? $(date -u +%T)"
timeout 40 python $T $W/tune/best.json kernels_bench/eager_point.py --out $W/eager > $W/eager.log 2>&1; echo "eager rc $? $(date -u +%T)"
tar -czf $OUT/call_z.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|FAILED|ERROR" $W/pytest.log | tail -6 | cut -c1-300
echo "== tune"; grep -E "^D=|compiled|_TILES" $W/tune.log | cut -c1-200
echo "== breakdown new"; grep "^N=" $W/tune.log | cut -c1-200; echo "== breakdown old"; grep "^N=" $W/tune_old.log | cut -c1-200
echo "== epoch"; for f in old new ml; do grep -h "^| [bm]" $W/epoch_$f.log | cut -d'|' -f2-6,10,15; done
echo "== profile"; head -22 $W/epoch_new/profile.md 2>/dev/null | tail -19 | cut -c1-150
echo "== eager"; grep "^| [fa]" $W/eager.log | cut -d'|' -f2-6
