#!/bin/bash
# Not yet run (written in session 5 of 2026-12-02, when the device time was spent). One H200,
# one process at a time until the tests at the end; "old" = 752e440 (call F's code), "new" =
# this commit (training code unchanged since 752e440; bench_eval's breakdown now spread over
# the split).
# (1) bench_epoch flash_ce, both presets: graph+compile after the tied-table fix (call D
#     measured 2.97 s / 0.74 s before it; predicted ~2.6 s / ~0.72 s), and graph with
#     --graph-min-bucket 1024 / 512 / 256 (beauty-like: the loss runs on a 1,024-slot bucket
#     for ~560 real rows; predicted -0.1 to -0.2 ms a step with 512 or 256, i.e. 3.89 ->
#     ~3.5 s, unless more graphs cost more than they save). Then ce and cce, graph, both
#     presets, for the README's table.
# (2) bench_eval beauty-like test split, streaming, chunk 32,768 (training's default) and
#     65,536, with a per-kernel profile of 5 batches spread over the split: what the next
#     evaluation change must attack (call E: 2.80 s at 65,536).
# (3) kernels_bench/eager_point.py (0.717 ms in call D).
# (4) GPU tests of the files changed since call C's suite: eval streaming, tied table, graph
#     step, bench_eval, env.
set -u
. experiments/bench/device/setup.sh
( sleep 560; pkill -f "bench_epoch|bench_eval|eager_point|pytest" ) > /dev/null 2>&1 &
W=/tmp/res && cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
C="dataset.cache_dir = '/tmp/cache'"
F=(--gin gin/beauty_like_flash_ce.gin --gin gin/ml20m_like_flash_ce.gin --gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20)
timeout 110 python experiments/bench/bench_epoch.py "${F[@]}" --variants graph+compile --profile-steps 20 --out $W/compile > $W/compile.log 2>&1; echo "compile rc $? $(date -u +%T)"
for b in 1024 512 256; do
  timeout 60 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin --gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph --graph-min-bucket $b --out $W/bucket_$b > $W/bucket_$b.log 2>&1; echo "bucket $b rc $? $(date -u +%T)"
done
G=(--gin gin/beauty_like_cce.gin --gin gin/ml20m_like_cce.gin --gin gin/beauty_like_ce.gin --gin gin/ml20m_like_ce.gin --gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20)
timeout 100 python experiments/bench/bench_epoch.py "${G[@]}" --variants graph --budget-s 80 --out $W/ce_cce > $W/ce_cce.log 2>&1; echo "ce/cce rc $? $(date -u +%T)"
timeout 70 python experiments/bench/bench_eval.py --preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --chunk-size 32768,65536 --sample-batches 5 --profile-batches 5 --out $W/eval > $W/eval.log 2>&1; echo "eval rc $? $(date -u +%T)"
timeout 25 python kernels_bench/eager_point.py --out $W/eager > $W/eager.log 2>&1; echo "eager rc $? $(date -u +%T)"
timeout 100 python -m pytest -m gpu -p no:cacheprovider -q -rfE tests/test_eval_streaming.py tests/test_tied_table.py tests/test_graph_step.py tests/test_bench_eval.py tests/test_env.py > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
find $W -name '*.pt' -delete; tar -czf $OUT/call_next.tar.gz -C /tmp res
for f in compile bucket_1024 bucket_512 bucket_256 ce_cce; do echo "== $f"; grep "^| [bm]" $W/$f.log | cut -d'|' -f2-6,10 | head -6; done
echo "== eval"; grep "^| beauty" $W/eval.log | cut -d'|' -f9-18
echo "== eager"; grep "^| " $W/eager.log | head -4; echo "== pytest"; tail -2 $W/pytest.log
