#!/bin/bash
# Device call C (2026-12-02, session 3, one H200, one process at a time on the GPU until the
# tests at the end): issue 21 before ("old" = edecc79, the code before this session's speed
# work) and after ("new" = this commit), in one call.
# (1) bench_epoch, variant graph (the project's fastest: the whole step as CUDA graphs),
#     beauty-like and ml20m-like x ce / cce / flash_ce, 40 warm-up steps, 1 timed epoch; old, then
#     new (new also profiles each step kernel by kernel: profile.md);
# (2) bench_eval, beauty-like, test split, the model scorer: dense (today's path, in the new
#     tree) and streaming at two chunk sizes, with per-kernel profiles;
# (3) kernels_bench/eager_point.py (eager flash_ce fwd+bwd at 560 x 207,649 against SDPA at the
#     same shape) in the old tree and in the new one;
# (4) then the GPU tests changed after call B (timings are over by then); test_split_lse's GPU
#     case (175 s) did not fit the device time left.
# The device time left (559 s) set the order (flash_ce first: --budget-s skips the last configs).
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
mkdir -p /tmp/old /tmp/new /tmp/shared /tmp/res && tar -xzf .gpu/old.tar.gz -C /tmp/old && tar -xzf .gpu/head.tar.gz -C /tmp/new
cp -r .gpu/shared_data /tmp/shared/data; cp /tmp/new/kernels_bench/eager_point.py /tmp/old/kernels_bench/
echo "new = $(cat .gpu/HEAD), old = edecc79"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
C="dataset.cache_dir = '/tmp/cache'"
G=(--gin gin/beauty_like_flash_ce.gin --gin gin/ml20m_like_flash_ce.gin --gin gin/beauty_like_cce.gin
   --gin gin/ml20m_like_cce.gin --gin gin/beauty_like_ce.gin --gin gin/ml20m_like_ce.gin
   --gin_bindings "$C" --variants graph --epochs 1 --warmup-steps 40 --sample-steps 20)
cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 120 python experiments/bench/bench_epoch.py "${G[@]}" --budget-s 95 --out /tmp/res/epoch_old > /tmp/res/epoch_old.log 2>&1; echo "epoch old rc $? $(date -u +%T)"
cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
timeout 110 python experiments/bench/bench_epoch.py "${G[@]}" --profile-steps 20 --budget-s 85 --out /tmp/res/epoch_new > /tmp/res/epoch_new.log 2>&1; echo "epoch new rc $? $(date -u +%T)"
timeout 60 python experiments/bench/bench_eval.py --preset beauty-like --cache-dir /tmp/cache --path dense,streaming --scorers model --splits test \
  --chunk-size 32768,65536 --profile-batches 3 --out /tmp/res/eval > /tmp/res/eval.log 2>&1; echo "eval rc $? $(date -u +%T)"
for t in old new; do (cd /tmp/$t && PYTHONPATH=/tmp/site:/tmp/$t timeout 25 python kernels_bench/eager_point.py --out /tmp/res/eager_$t > /tmp/res/eager_$t.log 2>&1; echo "eager $t rc $? $(date -u +%T)"); done
P="python -m pytest -m gpu -p no:cacheprovider -W ignore -rfE -q"
(timeout 60 $P tests/test_flash_ce.py tests/test_graph_step.py tests/test_bench_eval.py > /tmp/res/pytest_fixed.log 2>&1; echo "rc $?" >> /tmp/res/pytest_fixed.log) &
wait; date -u
find /tmp/res -name '*.pt' -delete; tar -czf $OUT/call_c.tar.gz -C /tmp res
for f in /tmp/res/pytest_*.log; do echo "== $(basename $f)"; grep -E "^(FAILED|ERROR)|passed|failed|^rc " $f | tail -6; done
for t in old new; do echo "== epoch $t"; grep "^| " /tmp/res/epoch_$t.log | cut -d'|' -f2-6,10 | head -8; done
echo "== eval"; grep "^| " /tmp/res/eval.log | cut -d'|' -f2-12 | head -6
for t in old new; do echo "== eager $t"; grep "^| " /tmp/res/eager_$t.log | head -10; done
