"""Where a graphed evaluation split's time goes (a device probe; CUDA only).

    PYTHONPATH=. python experiments/bench/device/probe_eval.py --cache-dir /tmp/cache [--batch-size 4096]

Runs ``evaluate_model`` on the beauty-like test split (an untrained SASRec, as bench_eval) twice
in one process and, for the second run, splits its wall time into: the eager first batches and
captures of ``BatchGraphs`` (host clock around each, device synchronized), the GPU time of every
replay (CUDA events around ``replay``, read at the end), the host time of each loop iteration
outside ``finish_top``'s wait, and the time ``finish_top`` waits. Also counts the rows the tie
fix-up rescans (with ``EVAL_PREFILTER=1``: the prefilter's overflow rows). Prints one table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch

from core import evaluation
from core.data.batching import DeviceSequences
from core.dataset_config import dataset
from core.evaluation import count_train_users, evaluate_model
from core.model import SASRec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default="data/cache")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--chunk-size", type=int, default=65536)
    parser.add_argument("--profile", action="store_true", help="a third run (probed) under torch.profiler: top kernels")
    args = parser.parse_args()
    data = dataset(name="beauty-like", synthetic_preset="beauty-like", synthetic_overrides={},
                   cache_dir=args.cache_dir).data
    seqs = DeviceSequences.from_data(data, "cuda")
    torch.manual_seed(0)
    model = SASRec(n_items=data.n_items, max_len=50).cuda().eval()
    rank_args = dict(split="test", batch_size=args.batch_size, max_len=50, mask_history=True, ks=(10,),
                     item_user_counts=data.train_item_user_counts(), n_train_users=count_train_users(data),
                     chunk_size=args.chunk_size)
    stats = {"capture_s": 0.0, "eager_first_s": 0.0, "replays": [], "wait_s": 0.0, "finish_rest_s": 0.0,
             "fixed_rows": 0}
    real_start, real_capture = evaluation.BatchGraphs.start, evaluation.BatchGraphs._capture
    real_finish, real_rescan = evaluation.finish_top, evaluation._rescan

    def start(self, batch, seen):
        key = (batch.inputs.shape[1], 0 if seen is None else evaluation.pairs_bucket(len(seen[0])))
        if len(batch.users) == self.n_users and key in self.graphs:
            static, replay, out = self.graphs[key]
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

            def timed():
                a.record()
                replay()
                b.record()
            self.graphs[key] = (static, timed, out)
            try:
                return real_start(self, batch, seen)
            finally:
                self.graphs[key] = (static, replay, out)
                stats["replays"].append((a, b))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        pending = real_start(self, batch, seen)
        torch.cuda.synchronize()
        stats["eager_first_s"] += time.perf_counter() - t0
        return pending

    def capture(self, *a, **kw):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        real_capture(self, *a, **kw)
        torch.cuda.synchronize()
        stats["capture_s"] += time.perf_counter() - t0

    def finish(pending):
        t0 = time.perf_counter()
        if pending.ready is not None:
            pending.ready.synchronize()
        t1 = time.perf_counter()
        stats["wait_s"] += t1 - t0
        try:
            return real_finish(pending)
        finally:
            stats["finish_rest_s"] += time.perf_counter() - t1  # the fix-up (its sync and rescan)

    def rescan(chunk, n_users, combine, scan_args):
        inner = real_rescan(chunk, n_users, combine, scan_args)
        return lambda rows: (stats.__setitem__("fixed_rows", stats["fixed_rows"] + len(rows)), inner(rows))[1]

    results = []
    for run in range(2):
        if run == 1:
            evaluation.BatchGraphs.start, evaluation.BatchGraphs._capture = start, capture
            evaluation.finish_top, evaluation._rescan = finish, rescan
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            metrics = evaluate_model(model, model, seqs, amp=True, **rank_args)
        torch.cuda.synchronize()
        results.append(time.perf_counter() - t0)
    gpu = [a.elapsed_time(b) for a, b in stats["replays"]]
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof, torch.no_grad():
            evaluate_model(model, model, seqs, amp=True, **rank_args)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90))
    n_batches = -(-data.n_users // args.batch_size)
    print(f"NDCG@10 {metrics['NDCG@10']:.6f}; graphs {evaluation.GRAPHS}, prefilter {evaluation.PREFILTER} "
          f"(candidates {evaluation.PREFILTER_CANDIDATES})")
    print("| batch | chunk | split s (plain run) | split s (probed) | batches | replays | replay GPU ms mean | "
          "replay GPU s total | eager first batches s | captures s | finish_top wait s | fix-up s | fixed rows |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.batch_size} | {args.chunk_size} | {results[0]:.3f} | {results[1]:.3f} | {n_batches} | {len(gpu)} | "
          f"{sum(gpu) / max(len(gpu), 1):.2f} | {sum(gpu) / 1000:.3f} | {stats['eager_first_s']:.3f} | "
          f"{stats['capture_s']:.3f} | {stats['wait_s']:.3f} | {stats['finish_rest_s']:.3f} | {stats['fixed_rows']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
