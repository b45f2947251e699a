#!/bin/bash
# Device call A of session 3 (2026-12-02, one H200): the GPU suite (`pytest -m gpu`) of this
# commit, in two processes side by side: tests/test_split_lse.py alone (its bit-identity case
# compiles many kernels) and everything else.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
R=/tmp/repo && mkdir -p $R /tmp/shared && tar -xzf .gpu/head.tar.gz -C $R && cp -r .gpu/shared_data /tmp/shared/data
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
P="python -m pytest -m gpu -p no:cacheprovider -W ignore -rfE --durations=8"
(timeout 500 $P -v tests/test_split_lse.py > $OUT/pytest_gpu_split_lse.log 2>&1; echo "rc $?" >> $OUT/pytest_gpu_split_lse.log) &
(timeout 500 $P -q --ignore=tests/test_split_lse.py > $OUT/pytest_gpu_rest.log 2>&1; echo "rc $?" >> $OUT/pytest_gpu_rest.log) &
wait; date -u
for f in $OUT/pytest_gpu_*.log; do echo "== $f"; grep -E "^(FAILED|ERROR)|passed|failed|^rc " $f | tail -8; done
