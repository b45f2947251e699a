#!/bin/bash
# Not yet run. One H200, one process at a time: issue 21 before ("old" = 9ced1f6, measured in
# call C) and after (this commit).
# (1) bench_epoch, beauty-like and ml20m-like x flash_ce / cce / ce, variant graph, 40 warm-up
#     steps, 1 timed epoch: old, then new with per-kernel profiles; then new flash_ce with
#     graph+compile (the whole-step graphs around a compiled body).
#     Predicted for beauty-like flash_ce (graph): GPU time per step 1.56 -> ~1.35 ms (no
#     per-parameter memset and add: -0.14 ms; one buffer for the item table: -0.05 ms), epoch
#     4.35 -> ~3.8 s; graph+compile another -0.15 to -0.25 ms (fused LayerNorm, dropout, bias
#     work); ml20m-like back to the padded figures of call C's "before" (1.14 s), less the same
#     savings. The 2.0 s / 0.7 s targets stay out of reach by these predictions.
# (2) bench_eval, beauty-like, test split, streaming (chunk 65,536), old and new tree.
#     Predicted per 4,096-user batch: group max 3.59 -> ~0.9 ms (strided groups, read
#     coalesced), body ~-2.5 ms (the last block on the last column; users ranked shortest
#     first, each batch cut to its longest input): 2.76 -> ~1.8 s a split; and with one host
#     sync per batch, taken one batch behind (session 5: no sync for history sizes or the
#     chunk split; the GPU runs ahead), the ~0.7 s of host time hidden: ~1.1-1.2 s a split.
#     First the GPU tests of the streaming evaluation (incl. the no-sync check).
# (4) issue 22 point 5's evidence: two NCCL ranks on the one GPU (expected: refused, "Duplicate
#     GPU detected"), which is why the kill test ran over gloo.
# (3) kernels_bench/eager_point.py (eager flash_ce, 560 x 207,649): the dC buffer has one row
#     more; expected unchanged (0.646 ms in call C); and with --fresh-workspaces, to decide
#     whether the reused workspaces (an LRU per stream and thread) pay for their bookkeeping.
set -u
[ -f .gpu/old.tar.gz ] || { echo "call_speed: .gpu/old.tar.gz (the tree of 9ced1f6) is missing"; exit 2; }
. experiments/bench/device/setup.sh
# A watchdog: whatever still runs at 545 s is stopped, so the archive below is always written.
( sleep 545; pkill -f "bench_epoch|bench_eval|eager_point|pytest|nccl_probe" ) > /dev/null 2>&1 &
C="dataset.cache_dir = '/tmp/cache'"
G=(--gin gin/beauty_like_flash_ce.gin --gin gin/ml20m_like_flash_ce.gin --gin gin/beauty_like_cce.gin
   --gin gin/ml20m_like_cce.gin --gin gin/beauty_like_ce.gin --gin gin/ml20m_like_ce.gin
   --gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20)
cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 130 python experiments/bench/bench_epoch.py "${G[@]}" --variants graph --budget-s 100 --out /tmp/res/epoch_old > /tmp/res/epoch_old.log 2>&1; echo "epoch old rc $? $(date -u +%T)"
cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
timeout 130 python experiments/bench/bench_epoch.py "${G[@]}" --variants graph --profile-steps 20 --budget-s 100 --out /tmp/res/epoch_new > /tmp/res/epoch_new.log 2>&1; echo "epoch new rc $? $(date -u +%T)"
timeout 100 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin --gin gin/ml20m_like_flash_ce.gin --gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile --profile-steps 20 --out /tmp/res/epoch_compile > /tmp/res/epoch_compile.log 2>&1; echo "epoch compile rc $? $(date -u +%T)"
timeout 60 python -m pytest -m gpu -p no:cacheprovider -q -rfE tests/test_eval_streaming.py > /tmp/res/pytest_eval.log 2>&1; echo "pytest eval rc $? $(date -u +%T)"
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --chunk-size 65536 --profile-batches 3)
for t in old new; do (cd /tmp/$t && PYTHONPATH=/tmp/site:/tmp/$t timeout 45 python experiments/bench/bench_eval.py "${E[@]}" --out /tmp/res/eval_$t > /tmp/res/eval_$t.log 2>&1; echo "eval $t rc $? $(date -u +%T)"); done
timeout 25 python kernels_bench/eager_point.py --out /tmp/res/eager_new > /tmp/res/eager_new.log 2>&1; echo "eager rc $? $(date -u +%T)"
timeout 25 python kernels_bench/eager_point.py --fresh-workspaces --out /tmp/res/eager_fresh > /tmp/res/eager_fresh.log 2>&1; echo "eager fresh rc $? $(date -u +%T)"
cat > /tmp/nccl_probe.py <<'PY'
import os, torch, torch.distributed as dist
torch.cuda.set_device(0)  # both ranks on the one GPU
try:
    dist.init_process_group("nccl", device_id=torch.device("cuda:0"))
    x = torch.ones(1, device="cuda"); dist.all_reduce(x); torch.cuda.synchronize()
    print(f"rank {dist.get_rank()}: all_reduce worked: {x.item()}")
except Exception as err:
    lines = str(err).strip().splitlines()
    print(f"rank {os.environ.get('RANK')}: {type(err).__name__}: {lines[0][:300]}")
    print(*[line[:300] for line in lines if "Duplicate" in line][:1])
PY
timeout 40 torchrun --standalone --nproc-per-node 2 /tmp/nccl_probe.py > /tmp/res/nccl_probe.log 2>&1; echo "nccl probe rc $? $(date -u +%T)"
find /tmp/res -name '*.pt' -delete; tar -czf $OUT/call_speed.tar.gz -C /tmp res
for t in old new compile; do echo "== epoch $t"; grep "^| " /tmp/res/epoch_$t.log | cut -d'|' -f2-6,10 | head -8; done
for t in old new; do echo "== eval $t"; grep "^| " /tmp/res/eval_$t.log | cut -d'|' -f2-12 | head -4; done
for t in new fresh; do echo "== eager $t"; grep "^| " /tmp/res/eager_$t.log | head -6; done
echo "== pytest eval"; tail -3 /tmp/res/pytest_eval.log; echo "== nccl probe"; grep -E "^rank|Duplicate|Error" /tmp/res/nccl_probe.log | head -6 | cut -c1-300
