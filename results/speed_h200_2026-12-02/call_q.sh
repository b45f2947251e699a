#!/bin/bash
# Call Q (seventh session of 2026-12-02; ran on deb4125, old = 440ec27, outputs in call_q/). One H200.
# (0) flash_ce's GPU tests with the small-catalog tiles (float64 agreement, broken kernels caught).
# (1) bench_epoch ml20m-like flash_ce graph+compile, old (440ec27: the table's tiles) then new,
#     old, new: predicted new ~0.02 s under old (0.73-0.74 s in calls G, H): ~0.71 s.
set -u
. experiments/bench/device/setup.sh
( sleep 420; pkill -f "bench_epoch|pytest" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
timeout 150 python -m pytest -m gpu -p no:cacheprovider -q -rfE tests/test_flash_ce.py tests/test_graph_step.py > $W/pytest.log 2>&1
echo "pytest rc $? $(date -u +%T)"
F=(--gin gin/ml20m_like_flash_ce.gin --gin_bindings "dataset.cache_dir = '/tmp/cache'" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph+compile)
for r in old_1 new_1 old_2 new_2; do t=${r%_*}
  (cd /tmp/$t && PYTHONPATH=/tmp/site:/tmp/$t timeout 60 python experiments/bench/bench_epoch.py "${F[@]}" \
    --out $W/epoch_$r > $W/epoch_$r.log 2>&1; echo "epoch $r rc $? $(date -u +%T)")
done
tar -czf $OUT/call_q.tar.gz -C /tmp res
echo "== pytest"; grep -E "passed|failed|FAILED|Error" $W/pytest.log | tail -6
echo "== epoch (old, new, old, new)"; for r in old_1 new_1 old_2 new_2; do echo "$r $(grep -h "^| ml" $W/epoch_$r.log | cut -d'|' -f2-6,10)"; done
