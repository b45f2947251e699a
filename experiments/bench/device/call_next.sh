#!/bin/bash
# Call DD (eleventh session, 2026-12-03; ran on 7b75378, outputs in call_dd/, table in call_dd/output.txt).
# Call T again on the tenth session's code and the windows kernel (dE from the forward, lean exponents, the tied table under
# the compiled graphed body with its row-add kernel): the quality the issue asks of the fastest variant.
# The default flash_ce config of issue 19's finals (Beauty 5-core and ML-100K, seeds 0-2, test
# split), with the body compiled inside the CUDA graphs and graph buckets from 128 positions
# (`train.compile = True`, `train.graph_min_bucket = 128`: call BB's 2.27-s beauty-like epoch),
# six runs side by side (no timing). Predicted: within seed noise of call T's 0.0510 +- 0.0003
# (Beauty) and 0.0954 +- 0.0024 (ML-100K), and of the graphed eager body's 0.0514 +- 0.0005 and
# 0.0953 +- 0.0020 (call B).
set -u
. experiments/bench/device/setup.sh
( sleep 400; pkill -f "experiments/run.py" ) > /dev/null 2>&1 &
W=/tmp/res && export PYTHONPATH=/tmp/site:/tmp/new
cd /tmp/new
S=results/tune_h200_2026-12-02/studies
B=(--gin_bindings "train.compile = True" --gin_bindings "train.graph_min_bucket = 128")
for d in beauty5core ml100k; do  # each dataset's cache written once, before the seeds read it
  python experiments/run.py --gin $S/${d}_flash_ce/final/default_s0/config.gin --gin_bindings "train.epochs = 1" \
    --out $W/warm_$d > $W/warm_$d.log 2>&1 &
done; wait
for d in beauty5core ml100k; do for s in 0 1 2; do
  (timeout 360 python experiments/run.py --gin $S/${d}_flash_ce/final/default_s$s/config.gin "${B[@]}" \
     --out $W/quality/${d}_s$s > $W/q_${d}_s$s.log 2>&1; echo "rc $?" >> $W/q_${d}_s$s.log) &
done; done
wait; date -u
find $W -name '*.pt' -delete; find $W -path '*checkpoint*' -prune -exec rm -rf {} + 2>/dev/null
tar -czf $OUT/call_dd.tar.gz -C /tmp res
python - <<'PY'
import json, statistics as st
from pathlib import Path
S = Path("results/tune_h200_2026-12-02/studies")
print("| dataset | seed | NDCG@10 compiled | NDCG@10 finals' default | epochs compiled / then |")
print("|---|---|---|---|---|")
for d in ("beauty5core", "ml100k"):
    new = []
    for s in range(3):
        then = json.loads((S / f"{d}_flash_ce/final/default_s{s}/metrics.json").read_text())
        p = Path(f"/tmp/res/quality/{d}_s{s}/metrics.json")
        if not p.exists():
            print(f"| {d} | {s} | (no metrics.json) | {then['test']['NDCG@10']:.4f} | |"); continue
        m = json.loads(p.read_text())
        new.append(m["test"]["NDCG@10"])
        print(f"| {d} | {s} | {new[-1]:.4f} | {then['test']['NDCG@10']:.4f} | {m['epochs']} / {then['epochs']} |")
    if len(new) > 1:
        print(f"| {d} | mean | {st.mean(new):.4f} +- {st.stdev(new):.4f} | | |")
PY
for f in $W/q_*.log; do echo "$(basename $f) $(grep -E '^rc |error' $f | tail -2 | tr '\n' ' ')"; done
