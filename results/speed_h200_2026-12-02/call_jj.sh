#!/bin/bash
# NOT RUN: refused ("too little device-machine time is left to start another machine"). Superseded by
# calls KK and LL (thirteenth session), which ran its GPU tests and all six quality runs.
# Call JJ (twelfth session, 2026-12-03), with the ~240 s of device time left. new = HEAD (call II's
# code: combo_kernels in the compiled body, the scan row-add, the forward's last-tile mask).
# All side by side (no timing): the graphed step's GPU tests (compiled epochs follow the eager
# ones), and the quality runs that fit: ML-100K seeds 0-2 and Beauty 5-core seed 0 (call FF's
# config: finals' default flash_ce, train.compile = True, graph_min_bucket = 128). Predicted
# within seed noise of FF's 0.0954 +- 0.0023 (ML-100K) and 0.0513 +- 0.0001 (Beauty).
set -u
. experiments/bench/device/setup.sh
cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
S=results/tune_h200_2026-12-02/studies
B=(--gin_bindings "train.compile = True" --gin_bindings "train.graph_min_bucket = 128")
(timeout 160 python -m pytest -q -p no:cacheprovider -W ignore -rfE --tb=short -m gpu tests/test_graph_step.py \
  > $W/pytest.log 2>&1; echo "pytest rc $? $(date -u +%T)" >> $W/pytest.log) &
for r in ml100k:0 ml100k:1 ml100k:2 beauty5core:0; do d=${r%:*}; s=${r#*:}
  (timeout 160 python experiments/run.py --gin $S/${d}_flash_ce/final/default_s$s/config.gin "${B[@]}" \
     --out /tmp/quality/${d}_s$s > $W/q_${d}_s$s.log 2>&1; echo "rc $?" >> $W/q_${d}_s$s.log) &
done
wait; echo "done $(date -u +%T)"
python experiments/bench/device/quality_table.py /tmp/quality 2>&1 | tail -12
for f in $W/q_*.log; do echo "$(basename $f) $(grep -E '^rc |rror|^test on' $f | tail -3 | tr '\n' ' ' | cut -c1-220)"; done
grep -E "passed|failed|FAILED|ERROR|Error|rc " $W/pytest.log | tail -6 | cut -c1-300
