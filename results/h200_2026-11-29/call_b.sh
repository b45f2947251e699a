#!/bin/bash
# Device call B (2026-11-29, one H200): the epoch table (alone on the GPU), then the GPU tests.
# Runs the committed code: .gpu/head.tar.gz is `git archive HEAD` (its commit in .gpu/HEAD),
# unpacked into a fresh folder. Everything comes back as $OUT/call_b.tar.gz.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
R=/tmp/repo W=/tmp/call_b && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
mkdir -p /tmp/shared && cp -r .gpu/shared_data /tmp/shared/data  # = ../shared/data beside $R
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
G=""; for d in beauty_like ml20m_like; do for l in ce cce flash_ce sampled_ce; do G="$G --gin gin/${d}_$l.gin"; done; done
timeout 330 python experiments/bench/bench_epoch.py $G --variants static+cudagraphs,graph --epochs 1 \
  --warmup-steps 30 --sample-steps 20 --budget-s 300 --out $W/bench_epoch > $W/bench_epoch.log 2>&1
echo "bench rc=$?"; date -u
# GPU tests: three processes side by side (Triton compiles on the CPU cores)
T="timeout 200 python -m pytest -m gpu -q -p no:cacheprovider -rfE"
$T tests/test_losses_agreement.py -k flash > $W/pytest_flash.log 2>&1 &
$T tests/test_losses_agreement.py -k "not flash" > $W/pytest_agreement.log 2>&1 &
$T --ignore=tests/test_losses_agreement.py tests > $W/pytest_rest.log 2>&1 &
wait; date -u
tar -czf $OUT/call_b.tar.gz -C $W .
cat $W/bench_epoch/results.md 2>/dev/null || tail -20 $W/bench_epoch.log
for f in $W/pytest_*.log; do echo "== $f"; tail -4 $f; done
