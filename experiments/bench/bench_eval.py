"""Evaluation benchmark: full-catalog ranking of every user, for the model and the popularity baseline.

    python experiments/bench/bench_eval.py --preset beauty-like --path dense,streaming   # before / after
    python experiments/bench/bench_eval.py --preset beauty-like --n-users 20000   # a quick CPU run

For each dataset, path, scorer ("model": a freshly initialised SASRec; "popularity": the
most-popular baseline) and split ("valid", "test") it times the evaluation train() runs, i.e.
``core.evaluation.evaluate_model`` / ``evaluate_popularity`` over ALL users with history
masking, bf16 autocast on CUDA and fp32 scores, after one untimed warm-up batch, GPU
synchronized: the ``seconds`` column is the time of one split, the second of two in a row
(``first_seconds``: the first, which also pays the once-per-process costs: CUDA-graph captures,
kernel plans for new shapes). ``--path``: "streaming" (the
default evaluation: catalog chunks of ``--chunk-size`` items (a list times each), running top-k, see
``core.evaluation``) and/or "dense" (the previous one: a (B, n_items) score matrix per batch);
the batch size defaults to ``default_eval_batch_size(n_items, path)`` (4096 streaming, ~1 GiB
of scores dense). The model is not trained: ranking the whole catalog costs the same whatever
the weights are (the metrics of an untrained model are only a sanity check, kept in
results.json; both paths must give the same ones).

A separate instrumented pass over ``--sample-batches`` batches, evenly spread over the split
(users are ranked shortest first, so the first batches alone are the cheapest), then gives the
mean ms per batch of each phase (CUDA events on the GPU, the host clock on the CPU; each batch starts on an idle
device): ``batch`` (``eval_batches`` builds inputs and targets), ``score`` (dense: the
(B, n_items) fp32 scores; streaming: the user vectors only, the matmul is in the scan),
``history`` (``history()``) and ``metrics`` (dense: ``RankingMetrics.update``, i.e. the
in-place -inf masking, rank, top-k, running sums; streaming: the whole scan over the catalog,
i.e. matmul + masking + top-k per chunk, then ``update_top``). On CUDA a few batches under
``torch.cuda.set_sync_debug_mode`` count the device->host syncs per batch and where they
happen, and ``--profile-batches N`` adds a per-kernel GPU time table (torch.profiler) of N
instrumented batches per row to results.md.

Writes results.csv, results.md and results.json (rows with metrics, environment, arguments,
sync sites) into ``--out`` after every run and prints the Markdown table last.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch

from core import evaluation
from core.data.batching import SPLITS, DeviceSequences, eval_batches, eval_order, history
from core.env import usable_device
from core.evaluation import (
    DEFAULT_CHUNK,
    DEFAULT_GROUP,
    PATHS,
    catalog_top,
    count_train_users,
    default_eval_batch_size,
    evaluate_model,
    evaluate_popularity,
    model_scores,
    popularity_scores_fn,
)
from core.metrics import RankingMetrics
from core.model import SASRec
from experiments.bench.common import (
    GIB,
    BenchError,
    count_syncs,
    error_row,
    load_datasets,
    mark,
    output_folder,
    phase_ms,
    profile_markdown,
    results_table,
    split_list,
    sync,
    write_results,
)
from experiments.output import environment, kernel_profile

SCORERS = ("model", "popularity")
PHASES = ("batch", "score", "history", "metrics")
COLUMNS = ["dataset", "users", "items", "path", "scorer", "split", "batch_size", "chunk_size",
           "n_batches", "seconds", "first_seconds",
           "users_per_s", "peak_gib", "batch_ms", "score_ms", "history_ms", "metrics_ms",
           "step_ms", "syncs_per_batch", "error"]


def make_score(scorer: str, model: SASRec, *, amp: bool, item_user_counts: np.ndarray):
    """``score(inputs (B, L)) -> chunk(lo, hi) -> (B, hi - lo)`` fp32, as evaluate_model /
    evaluate_popularity score (``core.evaluation.rank_split``'s ``score_fn``).

    Only the warm-up batch and the instrumented pass use it; the timed pass calls the real
    functions (tests/test_bench_eval.py checks that both give the same metrics).
    """
    if scorer == "popularity":
        return popularity_scores_fn(item_user_counts)
    return model_scores(model, model, amp=amp)


def spread(n_batches: int, count: int) -> list[int]:
    """``count`` batch indices evenly spaced over a split of ``n_batches`` (first and last
    included): users are ranked shortest first (``eval_order``), so the first batches alone
    would time only the shortest histories."""
    count = max(1, min(count, n_batches))
    return sorted({round(i * (n_batches - 1) / max(count - 1, 1)) for i in range(count)})


def batch_runner(seqs: DeviceSequences, score, *, split: str, eval_args: dict, path: str = "dense",
                 picks: list[int] | None = None):
    """One instrumented evaluation batch at a time: returns (``run``, its RankingMetrics).

    ``run(stamps)`` evaluates the next batch of ``split`` on ``path`` and appends a ``mark`` to
    ``stamps`` at each phase boundary. The batches are those of the evaluation (``eval_order``
    cut into ``batch_size``); ``picks`` (default: all, in order) are the ones run, cycling.
    """
    metrics = RankingMetrics(n_items=seqs.n_items, ks=eval_args["ks"],
                             item_user_counts=eval_args["item_user_counts"],
                             n_train_users=eval_args["n_train_users"])
    order, size = eval_order(seqs), eval_args["batch_size"]
    picks = picks if picks is not None else list(range(-(-len(order) // size)))
    done = 0

    def run(stamps: list) -> None:
        nonlocal done
        mark(stamps, seqs.device)
        lo = picks[done % len(picks)] * size
        done += 1
        users, inputs, targets, n_seen = next(eval_batches(
            seqs, split=split, batch_size=size, max_len=eval_args["max_len"], users=order[lo:lo + size]))
        mark(stamps, seqs.device)
        # rank_split's per-batch step, written out here only to put the phase marks inside it
        # (rank_split has no per-batch function or hook to time).
        chunk = score(inputs)  # streaming: the user vectors
        scores = chunk(0, seqs.n_items) if path == "dense" else None  # (B, n_items)
        mark(stamps, seqs.device)
        seen = history(seqs, users, split=split, size=n_seen) if eval_args["mask_history"] else None
        mark(stamps, seqs.device)
        if path == "dense":
            metrics.update(scores, targets, history=seen)
        else:
            metrics.update_top(catalog_top(
                chunk, len(users), n_items=seqs.n_items, k=max(metrics.ks), targets=targets,
                seen=seen, device=seqs.device, chunk_size=eval_args["chunk_size"],
                group_size=eval_args["group_size"]))
        mark(stamps, seqs.device)

    return run, metrics


def breakdown(run, *, device: torch.device, sample_batches: int) -> dict:
    """Mean ms per phase over ``sample_batches`` instrumented batches, each from an idle device."""
    sums = defaultdict(float)
    for _ in range(sample_batches):
        stamps: list = []
        sync(device)
        run(stamps)
        sync(device)
        for phase, (_, ms) in zip(PHASES, phase_ms(stamps)):
            sums[phase] += ms
    out = {f"{p}_ms": sums[p] / sample_batches for p in PHASES}
    out["step_ms"] = sum(out[f"{p}_ms"] for p in PHASES)
    return out


def bench_one(seqs, model, *, name: str, path: str, scorer: str, split: str, eval_args: dict, args,
              device) -> dict:
    """One (dataset, path, scorer, split) -> a row of COLUMNS (plus ``metrics``, ``sync_sites``
    and, with --profile-batches on CUDA, ``profile``)."""
    n_batches = -(-seqs.n_users // eval_args["batch_size"])
    cuda_model = path == "streaming" and scorer == "model" and device.type == "cuda"
    ways = [w for w, on in (("fused", evaluation.FUSED), ("prefilter", evaluation.uses_prefilter(seqs.n_items)),
                            ("graphs", evaluation.GRAPHS)) if cuda_model and on]
    row = {"dataset": name, "users": seqs.n_users, "items": seqs.n_items,
           "path": f"{path} ({', '.join(ways)})" if ways else path,
           "scorer": scorer, "split": split, "batch_size": eval_args["batch_size"],
           "chunk_size": eval_args["chunk_size"] if path == "streaming" else None,
           "n_batches": n_batches, "error": None}
    amp = device.type == "cuda"  # train()'s default: bf16 autocast on CUDA, fp32 on the CPU
    score = make_score(scorer, model, amp=amp, item_user_counts=eval_args["item_user_counts"])
    # warm-up, breakdown, sync count and profile cycle through batches spread over the split
    picks = spread(n_batches, max(args.sample_batches, args.profile_batches, 1))
    run, _ = batch_runner(seqs, score, split=split, eval_args=eval_args, path=path, picks=picks)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    with torch.no_grad():
        run([])  # warm-up: one untimed batch (cuBLAS handles, allocator, kernels)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rank_args = dict(eval_args, path=path)
        times = []
        for _ in range(2):  # the first split pays once-per-process costs (graph captures, new shapes)
            start = time.perf_counter()
            if scorer == "model":
                metrics = evaluate_model(model, model, seqs, split=split, amp=amp, **rank_args)
            else:
                metrics = evaluate_popularity(seqs, split=split, **rank_args)
            sync(device)
            times.append(time.perf_counter() - start)
        seconds = times[1]
        peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
        row.update(seconds=seconds, first_seconds=times[0], users_per_s=seqs.n_users / seconds, metrics=metrics,
                   peak_gib=peak)

        # Not part of the timed pass: the per-phase breakdown and the sync count.
        if args.sample_batches:
            row.update(breakdown(run, device=device, sample_batches=args.sample_batches))
        row["syncs_per_batch"], row["sync_sites"] = None, []
        if device.type == "cuda":
            row["syncs_per_batch"], row["sync_sites"] = count_syncs(lambda: run([]), times=3)
            if args.profile_batches:
                row["profile"] = kernel_profile(lambda: run([]), steps=args.profile_batches)
    return row


# --- output, command line ---------------------------------------------------------------------


def markdown(rows: list[dict], env: dict) -> str:
    """The results table; the breakdown is in mean ms per batch of the instrumented pass."""
    head = ["dataset", "users", "items", "path", "scorer", "split", "batch", "chunk", "seconds", "first s",
            "users/s", "peak GiB", "batch ms", "score ms", "history ms", "metrics ms", "step ms",
            "syncs/batch"]
    keys = [("dataset", 0), ("users", 0), ("items", 0), ("path", 0), ("scorer", 0), ("split", 0),
            ("batch_size", 0), ("chunk_size", 0), ("seconds", 3), ("first_seconds", 3), ("users_per_s", 0),
            ("peak_gib", 2),
            ("batch_ms", 2), ("score_ms", 2), ("history_ms", 2), ("metrics_ms", 2),
            ("step_ms", 2), ("syncs_per_batch", 1)]
    footer = (f"{env['device']}; torch {env['torch']}; {env['dtype']} model, fp32 scores; "
              f"seed {env['seed']}. Seconds: all users of the split, history masked, CUDA "
              "synchronized, after one untimed batch: the second of two splits in a row (first s: "
              "the first, which also captures the CUDA graphs). Breakdown: mean ms per batch of a "
              "separate instrumented pass (each batch from an idle device); streaming: score = "
              "user vectors, metrics = the scan (matmul + mask + top-k per chunk).")
    return results_table(rows, head=head, keys=keys, lead=8, footer=footer)


def _chunk(row: dict) -> str:
    return f" (chunk {row['chunk_size']:,})" if row.get("chunk_size") else ""


def write_outputs(out: Path, rows: list[dict], env: dict, args) -> str:
    """results.csv / .md / .json after every run; returns the Markdown."""
    table = markdown(rows, env)
    notes = [profile_markdown(f"{r['dataset']} {r['path']} {r['scorer']} {r['split']}{_chunk(r)}, per batch",
                              r["profile"])
             for r in rows if r.get("profile")]
    write_results(out, rows, columns=COLUMNS, table=table, env=env, args=args, notes=notes)
    return table


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", type=split_list, default=None,
                        help="synthetic presets, comma-separated (default beauty-like unless --gin)")
    parser.add_argument("--gin", action="append", default=[],
                        help="a data config (e.g. gin/data/beauty.gin); repeatable")
    parser.add_argument("--path", type=split_list, default=["streaming"],
                        help="evaluation paths, comma-separated: streaming (default), dense (the "
                             "previous one); 'dense,streaming' times before and after in one call")
    parser.add_argument("--chunk-size", type=split_list, default=[str(DEFAULT_CHUNK)],
                        help=f"items per catalog chunk of the streaming path (default {DEFAULT_CHUNK}); "
                             "comma-separated: one streaming row each")
    parser.add_argument("--group-size", type=int, default=DEFAULT_GROUP,
                        help=f"columns per group of the streaming top-k (default {DEFAULT_GROUP}; 1: plain topk)")
    parser.add_argument("--profile-batches", type=int, default=0,
                        help="CUDA only: per-kernel GPU time of this many instrumented batches per row")
    parser.add_argument("--scorers", type=split_list, default=list(SCORERS))
    parser.add_argument("--splits", type=split_list, default=list(SPLITS))
    parser.add_argument("--batch-size", type=int, default=None,
                        help="users per batch (default: default_eval_batch_size(n_items, path), as train())")
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--ks", type=split_list, default=["10"], help="metric cut-offs, e.g. 10,20")
    parser.add_argument("--no-mask-history", dest="mask_history", action="store_false",
                        help="rank without masking each user's history (train.mask_history = False)")
    parser.add_argument("--sample-batches", type=int, default=10,
                        help="batches of the per-phase breakdown (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-users", type=int, default=None,
                        help="override the presets' number of users (quick CPU runs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", default="data/cache", help="where presets are written once (a relative path is taken from the repository root)")
    parser.add_argument("--out", default=None, help="default runs/bench_eval/<UTC time>")
    args = parser.parse_args(argv)
    if args.preset is None:
        args.preset = [] if args.gin else ["beauty-like"]
    return args


def _check(args) -> None:
    """Raises BenchError on arguments that cannot run (before anything is written)."""
    if not args.path or not set(args.path) <= set(PATHS):
        raise BenchError(f"--path must be among {','.join(PATHS)}, got {','.join(args.path)}")
    try:
        args.chunk_size = [int(c) for c in args.chunk_size]
    except ValueError:
        raise BenchError(f"--chunk-size takes comma-separated integers, got {','.join(args.chunk_size)}") from None
    if not args.chunk_size or min(args.chunk_size) < 1 or args.group_size < 1 or args.profile_batches < 0:
        raise BenchError("--chunk-size and --group-size must be >= 1, --profile-batches >= 0")
    if not args.scorers or not set(args.scorers) <= set(SCORERS):
        raise BenchError(f"--scorers must be among {','.join(SCORERS)}, got {','.join(args.scorers)}")
    if not args.splits or not set(args.splits) <= set(SPLITS):
        raise BenchError(f"--splits must be among {','.join(SPLITS)}, got {','.join(args.splits)}")
    if args.batch_size is not None and args.batch_size < 1:
        raise BenchError("--batch-size must be >= 1")
    if args.max_len < 1 or args.sample_batches < 0 or (args.n_users is not None and args.n_users < 3):
        raise BenchError("--max-len must be >= 1, --sample-batches >= 0, --n-users >= 3")
    try:
        args.ks = [int(k) for k in args.ks]
    except ValueError:
        raise BenchError(f"--ks takes comma-separated integers, got {','.join(args.ks)}") from None
    if not args.ks or min(args.ks) < 1:
        raise BenchError("--ks must be positive integers")
    if not args.preset and not args.gin:
        raise BenchError("give --preset NAME[,NAME] and/or --gin DATA_CONFIG")


def main(argv: list[str] | None = None) -> int:
    """Runs every (dataset, path, scorer, split), writes the outputs, prints the table last."""
    args = _parse_args(argv)
    try:
        _check(args)
        out = output_folder(args.out, "bench_eval")
        try:
            device = usable_device(args.device, "--device")
        except ValueError as err:
            raise BenchError(str(err)) from None
        datasets = load_datasets(args)
        for name, data in datasets:
            if max(args.ks) > data.n_items:
                raise BenchError(f"--ks {max(args.ks)} exceeds the {data.n_items} items of {name}")
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if device.type != "cuda":
        print("note: no CUDA device: CPU timings (fp32) only check that the benchmark runs and "
              "extrapolate per user", file=sys.stderr)

    env = environment(device=device, dtype="bfloat16" if device.type == "cuda" else "float32",
                      seed=args.seed)
    rows, began = [], time.perf_counter()
    for name, data in datasets:
        seqs = DeviceSequences.from_data(data, device)
        torch.manual_seed(args.seed)
        model = SASRec(n_items=data.n_items, max_len=args.max_len).to(device).eval()
        runs = [(path, chunk) for path in args.path
                for chunk in (args.chunk_size if path == "streaming" else [None])]
        for path, chunk_size in runs:
            eval_args = dict(batch_size=args.batch_size or default_eval_batch_size(data.n_items, path),
                             max_len=args.max_len, mask_history=args.mask_history, ks=args.ks,
                             item_user_counts=data.train_item_user_counts(),
                             n_train_users=count_train_users(data),
                             chunk_size=chunk_size or DEFAULT_CHUNK, group_size=args.group_size)
            for scorer in args.scorers:
                for split in args.splits:
                    print(f"[{time.perf_counter() - began:6.0f} s] {name} {path} {chunk_size or ''} "
                          f"{scorer} {split}", file=sys.stderr)
                    try:
                        row = bench_one(seqs, model, name=name, path=path, scorer=scorer, split=split,
                                        eval_args=eval_args, args=args, device=device)
                    except Exception as err:  # e.g. out of memory at a large --batch-size: a result
                        traceback.print_exc()
                        row = error_row(err, dataset=name, users=data.n_users, items=data.n_items,
                                        path=path, scorer=scorer, split=split,
                                        batch_size=eval_args["batch_size"], chunk_size=chunk_size)
                    rows.append(row)
                    write_outputs(out, rows, env, args)
        del seqs, model
    table = write_outputs(out, rows, env, args)
    print(f"wrote {out}/results.csv, results.md, results.json", file=sys.stderr)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
