"""The quality table of the quality check (``results/gpu_suite_2026-12-02d/call.sh``): each
run's test NDCG@10 beside issue 19's finals' default row (same config and seed).
Usage: ``python quality_table.py RUNS_FOLDER``."""

import json
import statistics as st
import sys
from pathlib import Path

STUDIES = Path(__file__).resolve().parents[3] / "results/tune_h200_2026-12-02/studies"


def main(runs: Path) -> None:
    print("| dataset | seed | NDCG@10 now | NDCG@10 finals' default | epochs now / then | epoch s now / then |")
    print("|---|---|---|---|---|---|")
    for d in ("beauty5core", "ml100k"):
        now, then_all = [], []
        for s in range(3):
            then = json.loads((STUDIES / f"{d}_flash_ce/final/default_s{s}/metrics.json").read_text())
            path = runs / f"{d}_s{s}" / "metrics.json"
            if not path.exists():
                print(f"| {d} | {s} | (no metrics.json) | {then['test']['NDCG@10']:.4f} | | |")
                continue
            m = json.loads(path.read_text())
            now.append(m["test"]["NDCG@10"])
            then_all.append(then["test"]["NDCG@10"])
            print(f"| {d} | {s} | {now[-1]:.4f} | {then_all[-1]:.4f} | {m['epochs']} / {then['epochs']} | "
                  f"{m['epoch_time_s']:.2f} / {then['epoch_time_s']:.2f} |")
        if len(now) > 1:
            print(f"| {d} | mean ± std | {st.mean(now):.4f} ± {st.stdev(now):.4f} | "
                  f"{st.mean(then_all):.4f} ± {st.stdev(then_all):.4f} | | |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
