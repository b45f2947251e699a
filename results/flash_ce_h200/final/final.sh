#!/bin/bash
# flash_ce final device call: GPU tests, breakdown with the hard-coded table, sweeps.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 130 python -m pytest -m gpu tests/test_losses_agreement.py -k flash -q -p no:cacheprovider -rf 2>&1 | tail -30 > $OUT/pytest.txt
tail -12 $OUT/pytest.txt
timeout 50 python kernels_bench/tune_flash_ce.py --out $OUT --no-tune 2>&1 | tee $OUT/breakdown.log
S="--inputs trained --modes fw-bw --warmup-ms 5 --rep-ms 30 --no-progress"
timeout 45 python kernels_bench/sweep_vocab.py --n 560 --vocab 207649,1048576 --providers ce_bf16,cce,flash_ce $S --out /tmp/s560 > /tmp/s560.log 2>&1
timeout 70 python kernels_bench/sweep_vocab.py --n 12800 --vocab 20729,207649,1048576 --providers ce_bf16,cce,flash_ce $S --out /tmp/s12800 > /tmp/s12800.log 2>&1
timeout 40 python kernels_bench/sweep_vocab.py --n 12800 --vocab 207649 --providers flex_ce,flash_ce $S --out /tmp/sflex > /tmp/sflex.log 2>&1
for s in s560 s12800 sflex; do cp /tmp/$s/table.md $OUT/${s}_table.md 2>/dev/null || tail -5 /tmp/$s.log; done
(head -1 /tmp/s560/results.csv; for s in s560 s12800 sflex; do tail -n +2 /tmp/$s/results.csv; done) > $OUT/sweeps.csv 2>/dev/null
cat /tmp/s*/correctness.csv > $OUT/correctness.csv 2>/dev/null
for s in s560 s12800 sflex; do echo "== $s"; cat $OUT/${s}_table.md 2>/dev/null | head -30; done
date -u
