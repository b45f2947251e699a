#!/bin/bash
# ran on fbcbd9e; outputs in call_gg/ (output.txt: the tables).
# Call GG (twelfth session, 2026-12-03). new = HEAD (fbcbd9e): dC subtracts the targets' one-hot
# only in (catalog tile, row block)s holding a target, the forward masks only the catalog's last
# partial tile, the row-add compares ids instead of sorting them at <= 2,048 ids; old = be91e4c
# (call FF's code, 2.09-2.10 s).
# (1) kernel A/B at the graphed beauty-like step's shape (768 rows, 600 scored, V = 207,649),
#     old then new. Predicted: dC 0.191 -> ~0.17 ms, forward 0.159 -> ~0.155, sort + cast + scatter
#     (~0.03 ms) -> scan ~0.01 ms.
# (2) bench_epoch beauty-like graph+compile, min bucket 128, new (profiled), then old. Predicted
#     new 1.97-2.05 s against old ~2.10 s.
# (3) the GPU tests of the changed kernels (GPU mutants included).
set -u
. experiments/bench/device/setup.sh
( sleep 580; pkill -f "pytest|bench_epoch|kernel_ab" ) > /dev/null 2>&1 &
export PYTHONPATH=/tmp/site
for tree in old new; do
  PYTHONPATH=/tmp/site:/tmp/$tree timeout 60 python /tmp/new/experiments/bench/device/kernel_ab.py --label $tree \
    >> $W/kernel_ab.jsonl 2> $W/kernel_ab_$tree.err; echo "kernel_ab $tree rc $? $(date -u +%T)"
done
C="dataset.cache_dir = '/tmp/cache'"
F=(--gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile --graph-min-bucket 128)
(cd /tmp/new && PYTHONPATH=/tmp/site:/tmp/new timeout 160 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin \
  "${F[@]}" --profile-steps 20 --out $W/epoch_new > $W/epoch_new.log 2>&1; echo "epoch new rc $? $(date -u +%T)")
(cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 110 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin \
  "${F[@]}" --out $W/epoch_old > $W/epoch_old.log 2>&1; echo "epoch old rc $? $(date -u +%T)")
(cd /tmp/new && PYTHONPATH=/tmp/site:/tmp/new timeout 170 python -m pytest -q -p no:cacheprovider -W ignore -rfE --tb=short \
  -m gpu tests/test_table_grad.py tests/test_flash_ce_skip.py tests/test_windows_kernel.py tests/test_tied_table.py \
  "tests/test_losses_agreement.py::test_flash_ce_broken_kernels_are_caught_on_the_gpu" > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)")
echo "== kernel_ab"; python3 - $W/kernel_ab.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
names = []
for r in rows:
    names += [k for k in r["ms"] if k not in names]
print("kernel | " + " | ".join(r["label"] for r in rows))
for k in names[:14]:
    print(k[:48].ljust(48), " | ".join("%.4f" % r["ms"].get(k, 0) for r in rows))
print("total".ljust(48), " | ".join("%.4f (%d launches)" % (r["total_ms"], r["launches"]) for r in rows))
PY
echo "== epoch"; for f in new old; do grep -h "^| [bm]" $W/epoch_$f.log | cut -d'|' -f2-7,10,11,15,16; done
echo "== profile"; head -22 $W/epoch_new/profile.md 2>/dev/null | tail -18 | cut -c1-120
echo "== pytest"; grep -E "passed|failed|FAILED|ERROR|Error" $W/pytest.log | tail -8 | cut -c1-300
