#!/bin/bash
# Device call A (2026-11-29, one H200): the loss-only sweep, both regimes (N = 560 and 12,800
# scored positions), trained and random inputs, every provider but the slow/reference ones.
# Run from the repository root on the device with $OUT set; everything comes back as
# $OUT/call_a.tar.gz (the device returns at most 8 files). An interrupted sweep leaves its rows
# in sweep_*.partial/.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
export PYTHONPATH=/tmp/site:$PWD
W=/tmp/call_a && mkdir -p $W
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
P=ce_bf16,cce,cce_exact,cce_torch_compile,flash_ce,flex_ce,sampled_ce_256_uniform,sampled_ce_3000_uniform
S="--inputs trained,random --modes fw-bw --warmup-ms 5 --rep-ms 25 --no-progress --providers $P"
timeout 190 python kernels_bench/sweep_vocab.py --n 560 --vocab 207649,1048576 $S \
  --out $W/sweep_n560 > $W/sweep_n560.log 2>&1; echo "n560 rc=$?"; date -u
timeout 250 python kernels_bench/sweep_vocab.py --n 12800 --vocab 20729,207649,1048576 $S \
  --out $W/sweep_n12800 > $W/sweep_n12800.log 2>&1; echo "n12800 rc=$?"; date -u
tar -czf $OUT/call_a.tar.gz -C $W .
for s in sweep_n560 sweep_n12800; do
  echo "== $s"; cat $W/$s/table.md 2>/dev/null || tail -5 $W/$s.log
done
