#!/bin/bash
# Device call B (2026-12-02, session 3, one H200): correctness of issue 21's GPU paths and its
# quality check, side by side (no timing here: call C times, alone on the GPU).
# (1) `pytest -m gpu` of this commit in three processes: test_split_lse.py alone (compiles many
#     kernels), the packed/graphed-step/flash_ce tests, and everything else;
# (2) quality: the default flash_ce config of issue 19's finals (Beauty 5-core and ML-100K,
#     seeds 0-2, test split; their config.gin as run then), now with packed batches, the new
#     flash_ce and streaming evaluation, all six runs at once. Compared with the finals' default rows.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
R=/tmp/repo W=/tmp/w && mkdir -p $R $W /tmp/shared && tar -xzf .gpu/head.tar.gz -C $R && cp -r .gpu/shared_data /tmp/shared/data
cd $R && export PYTHONPATH=/tmp/site:$R
echo "commit $(cat $OLDPWD/.gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
P="python -m pytest -m gpu -p no:cacheprovider -W ignore -rfE --durations=5 -q"
(timeout 520 $P tests/test_split_lse.py > $W/pytest_split_lse.log 2>&1; echo "rc $?" >> $W/pytest_split_lse.log) &
(timeout 520 $P tests/test_packed.py tests/test_graph_step.py tests/test_flash_ce.py tests/test_flash_ce_eager_point.py tests/test_eval_streaming.py > $W/pytest_new.log 2>&1; echo "rc $?" >> $W/pytest_new.log) &
(timeout 520 $P --ignore=tests/test_split_lse.py --ignore=tests/test_packed.py --ignore=tests/test_graph_step.py --ignore=tests/test_flash_ce.py --ignore=tests/test_flash_ce_eager_point.py --ignore=tests/test_eval_streaming.py > $W/pytest_rest.log 2>&1; echo "rc $?" >> $W/pytest_rest.log) &
S=results/tune_h200_2026-12-02/studies
for d in beauty5core ml100k; do  # each dataset's cache written once, before the seeds read it
  python experiments/run.py --gin $S/${d}_flash_ce/final/default_s0/config.gin --gin_bindings "train.epochs = 1" --out $W/warm_$d > $W/warm_$d.log 2>&1 &
done; wait $(jobs -p | tail -2)
for d in beauty5core ml100k; do for s in 0 1 2; do
  (timeout 480 python experiments/run.py --gin $S/${d}_flash_ce/final/default_s$s/config.gin --out $W/quality/${d}_s$s > $W/q_${d}_s$s.log 2>&1; echo "rc $?" >> $W/q_${d}_s$s.log) &
done; done
wait; date -u
find $W/quality -name '*.pt' -delete; cp $W/*.log $W/quality/ 2>/dev/null
tar -czf $OUT/call_b.tar.gz -C $W quality; cp $W/pytest_*.log $OUT/
for f in $W/pytest_*.log; do echo "== $(basename $f)"; grep -E "^(FAILED|ERROR)|passed|failed|^rc " $f | tail -12; done
python - <<'PY'
import json, statistics as st
from pathlib import Path
S = Path("results/tune_h200_2026-12-02/studies")
print("| dataset | seed | NDCG@10 new | NDCG@10 finals' default | epochs new / then | epoch s new / then |")
print("|---|---|---|---|---|---|")
for d in ("beauty5core", "ml100k"):
    new, old = [], []
    for s in range(3):
        then = json.loads((S / f"{d}_flash_ce/final/default_s{s}/metrics.json").read_text())
        p = Path(f"/tmp/w/quality/{d}_s{s}/metrics.json")
        if not p.exists():
            print(f"| {d} | {s} | (no metrics.json) | {then['test']['NDCG@10']:.4f} | | |"); continue
        m = json.loads(p.read_text())
        new.append(m["test"]["NDCG@10"]); old.append(then["test"]["NDCG@10"])
        print(f"| {d} | {s} | {new[-1]:.4f} | {old[-1]:.4f} | {m['epochs']} / {then['epochs']} | "
              f"{m['epoch_time_s']:.2f} / {then['epoch_time_s']:.2f} |")
    if len(new) > 1:
        print(f"| {d} | mean ± std | {st.mean(new):.4f} ± {st.stdev(new):.4f} | {st.mean(old):.4f} ± {st.stdev(old):.4f} | | |")
PY
