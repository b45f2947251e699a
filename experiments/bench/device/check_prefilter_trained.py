"""The prefilter against the matmul path on TRAINED models (a device check; CUDA only).

    PYTHONPATH=. python experiments/bench/device/check_prefilter_trained.py RUN_DIR [RUN_DIR ...]

For each run folder (``experiments/run.py``'s output), loads the best model and evaluates the
valid and test splits twice in one process: the prefilter on (``evaluation.PREFILTER``, whatever
the catalog size: ``PREFILTER_MIN_ITEMS`` = 0) and off (the matmul path), each after a warm-up
split. Prints one row per (run, split, metric): both values and whether they are equal to the
last digit, and each path's seconds. Exit status 1 if any metric differs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch

import core
from core import evaluation


def timed(run, split: str) -> tuple[dict, float]:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # (the CPU: both paths alike)
    core.evaluate(run, split=split)  # warm-up: plans, compiles, captures of new shapes
    sync()
    t0 = time.perf_counter()
    metrics = core.evaluate(run, split=split)
    sync()
    return metrics, time.perf_counter() - t0


def main() -> int:
    differ = 0
    evaluation.PREFILTER_MIN_ITEMS = 0
    print("| run | split | metric | prefilter | matmul path | equal |")
    print("|---|---|---|---|---|---|")
    for folder in sys.argv[1:]:
        run = core.load_run(folder)
        for split in ("valid", "test"):
            out = {}
            for on in (True, False):
                evaluation.PREFILTER = on
                out[on] = timed(run, split)
            for name in sorted(out[True][0]):
                a, b = out[True][0][name], out[False][0][name]
                differ += a != b
                print(f"| {Path(folder).name} | {split} | {name} | {a:.6f} | {b:.6f} | {a == b} |")
            print(f"| {Path(folder).name} | {split} | seconds | {out[True][1]:.3f} | {out[False][1]:.3f} | |")
    evaluation.PREFILTER = True
    print(f"metrics that differ: {differ}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
