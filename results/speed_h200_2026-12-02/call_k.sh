#!/bin/bash
# Call K (seventh session of 2026-12-02; ran on fd960fa, outputs in call_k/). One H200, one process at a time, this commit only.
# Predictions:
# (0) GPU tests: graphed evaluation equals the eager one bit for bit and replays without a host
#     sync (test_eval_graphs); the fused path's mended target scoring (test_eval_fused); the
#     graphed step through filler_rows (test_graph_step, test_flash_ce_skip); streaming no-sync.
# (1) bench_eval beauty-like test split, chunk 65,536: eager 2.7-2.9 s (as calls H and J);
#     graphs ~1.1-1.3 s (GPU ~6 ms a batch x 179, plus ~5 captures); batch 8,192 a little less.
# (2) bench_epoch beauty-like graph+compile, min bucket 128: ~2.62 s (as call H).
# (3) test_split_lse's CUDA bit-identity (224 s in session 5), last, as the time allows.
set -u
. experiments/bench/device/setup.sh
( sleep 530; pkill -f "bench_eval|bench_epoch|pytest" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
timeout 150 python -m pytest -m gpu -p no:cacheprovider -q -rfE tests/test_eval_graphs.py tests/test_eval_fused.py \
  tests/test_eval_streaming.py tests/test_graph_step.py tests/test_flash_ce_skip.py > $W/pytest.log 2>&1
echo "pytest rc $? $(date -u +%T)"
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --sample-batches 2)
run_eval() { # name, graphs, extra args
  EVAL_GRAPHS=$2 timeout 45 python experiments/bench/bench_eval.py "${E[@]}" "${@:3}" --out $W/eval_$1 \
    > $W/eval_$1.log 2>&1; echo "eval $1 rc $? $(date -u +%T)"
}
run_eval eager 0 --chunk-size 65536
run_eval graphs 1 --chunk-size 65536
run_eval graphs_32k 1 --chunk-size 32768
run_eval graphs_8192 1 --chunk-size 65536 --batch-size 8192
timeout 100 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin \
  --gin_bindings "dataset.cache_dir = '/tmp/cache'" --epochs 1 --warmup-steps 40 --sample-steps 20 \
  --variants graph+compile --graph-min-bucket 128 --out $W/epoch_128 > $W/epoch_128.log 2>&1
echo "epoch rc $? $(date -u +%T)"
timeout 240 python -m pytest -m gpu -p no:cacheprovider -q -rfE tests/test_split_lse.py > $W/split_lse.log 2>&1
echo "split_lse rc $? $(date -u +%T)"
tar -czf $OUT/call_k.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|FAILED|Error" $W/pytest.log | tail -8
echo "== split_lse"; tail -2 $W/split_lse.log
echo "== eval"; for n in eager graphs graphs_32k graphs_8192; do grep -h "^| beauty" $W/eval_$n.log | cut -d'|' -f5,8-12; done
echo "== epoch"; grep -h "^| beauty" $W/epoch_128.log | cut -d'|' -f2-6,10
