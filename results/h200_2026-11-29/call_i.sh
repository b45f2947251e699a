#!/bin/bash
# Device call I (2026-11-29, second session, one H200): the distributed tests on CUDA
# (tests/test_distributed*.py -m gpu: 2 ranks sharing the GPU over gloo against one CUDA
# process, fp32 training and, new here, the bf16 data-parallel gradient against float64). Committed code.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl 2>/dev/null
R=/tmp/repo W=/tmp/call_i && rm -rf $R && mkdir -p $R $W && tar -xzf .gpu/head.tar.gz -C $R
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
timeout 300 python -m pytest -m gpu -v -p no:cacheprovider -rfEP tests/test_distributed.py tests/test_distributed_catalog.py \
  tests/test_distributed_training.py tests/test_distributed_run.py > $W/pytest_distributed.log 2>&1
echo "pytest rc=$?"; date -u
tar -czf $OUT/call_i.tar.gz -C $W .
grep -E "PASSED|FAILED|ERROR|passed|failed|relative error" $W/pytest_distributed.log | tail -14
