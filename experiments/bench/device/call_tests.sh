#!/bin/bash
# Not yet run. One H200: (1) `pytest -m gpu` of this commit in three processes (test_split_lse
# alone: it compiles many kernels); (2) issue 22 point 2: items-10m CE capped at 10 GiB per
# process (train.gpu_memory_gib) - one process expected to end in one out-of-memory line, two
# catalog-parallel ranks sharing the GPU over gloo expected to train, evaluate and checkpoint,
# then resume for a second epoch. Per-rank peaks are in metrics.json (settings.parallel).
set -u
. experiments/bench/device/setup.sh
W=/tmp/res && cd /tmp/new && export PYTHONPATH=/tmp/site:/tmp/new
P="python -m pytest -m gpu -p no:cacheprovider -W ignore -rfE --durations=5 -q"
(timeout 330 $P tests/test_split_lse.py > $W/pytest_split_lse.log 2>&1; echo "rc $?" >> $W/pytest_split_lse.log) &
(timeout 330 $P tests/test_packed.py tests/test_graph_step.py tests/test_flash_ce.py tests/test_eval_streaming.py tests/test_model.py tests/test_tied_table.py > $W/pytest_step.log 2>&1; echo "rc $?" >> $W/pytest_step.log) &
(timeout 330 $P --ignore=tests/test_split_lse.py --ignore=tests/test_packed.py --ignore=tests/test_graph_step.py --ignore=tests/test_flash_ce.py --ignore=tests/test_eval_streaming.py --ignore=tests/test_model.py --ignore=tests/test_tied_table.py > $W/pytest_rest.log 2>&1; echo "rc $?" >> $W/pytest_rest.log) &
wait; date -u
C="dataset.cache_dir = '/tmp/cache'"
B=(--gin gin/items_10m_ce.gin --gin_bindings "$C" --gin_bindings "train.gpu_memory_gib = 10" --gin_bindings "train.epochs = 1")
timeout 60 python experiments/run.py "${B[@]}" --out $W/one > $W/one.log 2>&1; echo "one process: rc $?" | tee -a $W/one.log
T="torchrun --standalone --nproc-per-node 2"
timeout 120 $T experiments/run.py "${B[@]}" --gin_bindings "train.catalog_parallel = True" --out $W/two > $W/two.log 2>&1; echo "two ranks: rc $?" | tee -a $W/two.log
timeout 100 $T experiments/run.py --resume --out $W/two --gin_bindings "train.epochs = 2" > $W/resume.log 2>&1; echo "resume: rc $?" | tee -a $W/resume.log
date -u
cp $W/*.log $OUT/; for r in one two; do [ -f $W/$r/metrics.json ] && cp $W/$r/metrics.json $OUT/metrics_$r.json; done
for f in $W/pytest_*.log; do echo "== $(basename $f)"; grep -E "^(FAILED|ERROR)|passed|failed|^rc " $f | tail -12; done
for f in one two resume; do echo "== $f"; tail -3 $W/$f.log; done
