#!/bin/bash
# ran on c89ccda; outputs in call_hh/ (output.txt: the tables). Files over the return limit did not come back: epoch_new/profile.md and the results.json files (the figures above are from the call output).
# Call HH (twelfth session, 2026-12-03). new = HEAD: call GG's forward mask (only the catalog's
# last partial tile) and the row-add's scan kept; dC's one-hot test per (tile, row block) taken
# back out (GG: dC 0.202 -> 0.210 ms, slower); old = be91e4c (call FF's code).
# (1) kernel A/B at the graphed beauty-like shape, new. Predicted: dC back to ~0.20 (old's),
#     forward ~0.141, scan ~0.010.
# (2) bench_epoch beauty-like graph+compile, min bucket 128: new (profiled); new with inductor's
#     combo_kernels (independent small kernels launched as one; GG's profile has 12 + 6 weight
#     casts, 6 sums...); old last. Predicted: new 1.99-2.01 s (GG 2.02 s with the slower dC,
#     0.721 ms of GPU a step, minus ~0.007); combo: fewer device activities a step, 0-0.05 s less.
# (3) the GPU tests of flash_ce's changed kernels (GPU mutants).
set -u
. experiments/bench/device/setup.sh
( sleep 580; pkill -f "pytest|bench_epoch|kernel_ab" ) > /dev/null 2>&1 &
PYTHONPATH=/tmp/site:/tmp/new timeout 60 python /tmp/new/experiments/bench/device/kernel_ab.py --label new \
  >> $W/kernel_ab.jsonl 2> $W/kernel_ab_new.err; echo "kernel_ab new rc $? $(date -u +%T)"
C="dataset.cache_dir = '/tmp/cache'"
F=(--gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile --graph-min-bucket 128)
cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
timeout 150 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin \
  "${F[@]}" --profile-steps 20 --out $W/epoch_new > $W/epoch_new.log 2>&1; echo "epoch new rc $? $(date -u +%T)"
timeout 150 python experiments/bench/device/with_inductor.py combo_kernels=True experiments/bench/bench_epoch.py \
  --gin gin/beauty_like_flash_ce.gin "${F[@]}" --profile-steps 20 --out $W/epoch_combo > $W/epoch_combo.log 2>&1; echo "epoch combo rc $? $(date -u +%T)"
timeout 100 python -m pytest -q -p no:cacheprovider -W ignore -rfE --tb=short -m gpu tests/test_flash_ce_skip.py \
  "tests/test_losses_agreement.py::test_flash_ce_broken_kernels_are_caught_on_the_gpu" > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)"
(cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 100 python experiments/bench/bench_epoch.py --gin gin/beauty_like_flash_ce.gin \
  "${F[@]}" --out $W/epoch_old > $W/epoch_old.log 2>&1; echo "epoch old rc $? $(date -u +%T)")
echo "== kernel_ab"; python3 -c "
import json,sys
for l in open(sys.argv[1]):
    r = json.loads(l); print(r['label'], r['total_ms'], r['launches']); [print('  %.4f %s' % (v, k)) for k, v in list(r['ms'].items())[:6]]
" $W/kernel_ab.jsonl
echo "== epoch"; for f in new combo old; do echo "$f $(grep -h '^| [bm]' $W/epoch_$f.log | cut -d'|' -f5-7,10,11,15,16)"; done
echo "== profiles"; for f in new combo; do grep -h "GPU time per step" $W/epoch_$f/profile.md; grep -c "^| 0" $W/epoch_$f/profile.md; done
python3 -c "
import json,sys
for f in sys.argv[1:]:
    try: r = json.load(open(f))
    except Exception as e: print(f, e); continue
    rows = r.get('rows', r) if isinstance(r, dict) else r
    print(f, [ (x.get('profile') or {}).get('launches') for x in rows if isinstance(x, dict)])
" $W/epoch_new/results.json $W/epoch_combo/results.json
echo "== pytest"; grep -E "passed|failed|FAILED|ERROR|Error" $W/pytest.log | tail -8 | cut -c1-300
