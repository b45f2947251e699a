"""Tile-size search for flash_ce's kernels (how core/losses/flash_ce.py's ``_TILES`` was chosen).

    python kernels_bench/tune_flash_ce.py --out DIR [--dims 32,64,128,256] [--budget-s 200]
        [--vocab 207649] [--regimes few,many]

For each head dim D and each regime of the table (few rows: N = 560, many rows: N = 12,800; both
against V = 207,649 items, bf16), every candidate (BLOCK_N, BLOCK_V, num_warps, num_stages) of
each tuned kernel ("fwd": the forward, LSE and softmax C; "dc") is timed through its launcher
(``forward_stats``, ``grad_c``: the kernel plus its small merge kernels) with
``triton.testing.do_bench``; dE (``grad_e``, a merge of the forward's partials) has no tiles. All candidates are first compiled
by parallel worker processes at the same shapes (Triton's on-disk cache), so the timing loop
does not wait on the compiler. Then the best table is applied and each kernel, and the whole
loss (forward + backward, eagerly and replayed from a CUDA graph), is timed at the issue's shapes
(D = 64), with achieved TFLOP/s (4 matmuls: 8 N V D flops) and the peak memory above the
operands (dE and dC included; their size is printed beside it). Writes tune.csv, best.json, breakdown.csv under ``--out``; prints the
best table (a Python literal for ``_TILES``) and the breakdown. CUDA only.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from core.atomic import unwritable, write_text

KERNELS = ("fwd", "dc")  # tuned; the breakdown times dE's merge ("de") too
REGIMES = {0: 560, 1: 12_800}  # index in _TILES' (few rows, many rows) pair -> N timed
TUNE_V = 207_649
BREAKDOWN = [(560, 207_649), (560, 1_048_576), (12_800, 20_729), (12_800, 207_649), (12_800, 1_048_576)]


def candidates(d: int) -> list[tuple[int, int, int, int]]:
    """(BLOCK_N, BLOCK_V, num_warps, num_stages) tried at head dim ``d``."""
    if d <= 64:
        pairs = [(32, 128), (64, 64), (64, 128), (64, 256), (128, 32), (128, 64), (128, 128),
                 (128, 256), (256, 64), (256, 128)]
        stages = (2, 3)
    elif d == 128:
        pairs = [(32, 64), (32, 128), (64, 64), (64, 128), (128, 64), (128, 128)]
        stages = (2, 3)
    else:
        pairs = [(32, 32), (32, 64), (64, 32), (64, 64), (64, 128), (128, 64)]
        stages = (2, 3)
    return [(bn, bv, w, s) for bn, bv in pairs for w in (4, 8) for s in stages]


_CACHE: dict = {}


def operands(n: int, v: int, d: int):
    """bf16 (e, c), targets, the forward's stats (LSEs and count) and partials, and an upstream
    gradient of 1, cached per shape."""
    fce = importlib.import_module("core.losses.flash_ce")  # the module, not the function

    key = (n, v, d)
    if key not in _CACHE:
        _CACHE.clear()
        g = torch.Generator(device="cuda").manual_seed(0)
        e = (torch.randn(n, d, device="cuda", generator=g) * d**-0.25).bfloat16()
        c = (torch.randn(v, d, device="cuda", generator=g) * d**-0.25).bfloat16()
        t = torch.randint(0, v, (n,), device="cuda", generator=g)
        _, stats, part = fce.forward_stats(e, c, t)
        grad = torch.ones((), device="cuda")
        _CACHE[key] = (e, c, t, stats, part, grad)
    return _CACHE[key]


def call(kernel: str, n: int, v: int, d: int):
    """The launcher of ``kernel`` bound to cached operands: () -> tensor. The plan is rebuilt
    per call here (``set_tile`` changes the tiles between candidates)."""
    fce = importlib.import_module("core.losses.flash_ce")  # the module, not the function

    e, c, t, stats, part, grad = operands(n, v, d)
    fce._PLANS.clear()
    if kernel == "fwd":
        return lambda: fce.forward_stats(e, c, t)
    if kernel == "de":
        return lambda: fce.grad_e(e, c, stats, part, t, grad)
    return lambda: fce.grad_c(e, c, stats, t, grad)


def set_tile(kernel: str, d: int, regime: int, cfg) -> None:
    fce = importlib.import_module("core.losses.flash_ce")  # the module, not the function

    pair = list(fce._TILES[d][kernel])
    pair[regime] = tuple(cfg)
    fce._TILES[d][kernel] = tuple(pair)
    fce._PLANS.clear()  # plans hold the tiles they were built with


def jobs(dims, vocab: int = TUNE_V, regimes=tuple(REGIMES), kernels=KERNELS) -> list[tuple]:
    return [(d, regime, kernel, cfg, vocab) for d in dims for regime in regimes for kernel in kernels
            for cfg in candidates(d)]


def _compile(chunk: list[tuple]) -> int:
    """Worker: launches each job once (compiling it into Triton's cache); returns failures."""
    failed = 0
    for d, regime, kernel, cfg, vocab in chunk:
        set_tile(kernel, d, regime, cfg)
        try:
            call(kernel, REGIMES[regime], vocab, d)()
        except Exception:  # e.g. out of shared memory: reported again by the timing loop
            failed += 1
    torch.cuda.synchronize()
    return failed


def tune(dims, workers: int, budget_s: float, out: Path, vocab: int = TUNE_V, regimes=tuple(REGIMES),
         kernels=KERNELS) -> dict:
    from triton.testing import do_bench

    fce = importlib.import_module("core.losses.flash_ce")  # the module, not the function

    todo = jobs(dims, vocab, regimes, kernels)
    t0 = time.time()
    with mp.get_context("spawn").Pool(workers) as pool:
        failed = sum(pool.map(_compile, [todo[i::workers] for i in range(workers)]))
    print(f"compiled {len(todo)} candidates in {time.time() - t0:.0f} s ({failed} failed)", flush=True)
    best: dict = {}
    t0 = time.time()
    text = io.StringIO()  # tune.csv, rewritten whole (atomically) after every candidate
    rows = csv.writer(text)
    rows.writerow(["D", "N", "V", "kernel", "block_n", "block_v", "warps", "stages", "ms"])
    write_text(text.getvalue(), out / "tune.csv")
    for d, regime, kernel, cfg, _ in todo:
        if time.time() - t0 > budget_s:
            print("budget spent: remaining candidates untimed", flush=True)
            break
        set_tile(kernel, d, regime, cfg)
        try:
            ms = do_bench(call(kernel, REGIMES[regime], vocab, d), warmup=5, rep=20)
        except Exception as err:
            ms = float("nan")
            print(f"D={d} {kernel} {cfg}: {type(err).__name__}", flush=True)
        rows.writerow([d, REGIMES[regime], vocab, kernel, *cfg, f"{ms:.4f}"])
        write_text(text.getvalue(), out / "tune.csv")
        key = (d, kernel, regime)
        if ms == ms and (key not in best or ms < best[key][1]):
            best[key] = (cfg, ms)
    table = {d: {k: tuple(tuple(best[(d, k, r)][0]) if (d, k, r) in best else fce._TILES[d][k][r]
                          for r in REGIMES) for k in KERNELS} for d in dims}  # untimed regimes: as they were
    for d in dims:
        for k in KERNELS:
            fce._TILES[d][k] = table[d][k]
            fce._PLANS.clear()
            print(f"D={d:3d} {k:3s}: " + ", ".join(
                f"N={REGIMES[r]} {best[(d, k, r)][0]} {best[(d, k, r)][1]:.3f} ms"
                for r in REGIMES if (d, k, r) in best), flush=True)
    write_text(json.dumps({str(d): table[d] for d in dims}, indent=1), out / "best.json")
    print("_TILES = " + repr({d: table[d] for d in dims}), flush=True)
    return table


def breakdown(out: Path, d: int = 64) -> None:
    """Each kernel and the whole loss at the issue's shapes, with the table as it now stands."""
    from triton.testing import do_bench

    from core.losses import flash_ce

    lines = []
    for n, v in BREAKDOWN:
        ms = {k: do_bench(call(k, n, v, d), warmup=5, rep=30) for k in (*KERNELS, "de")}
        e, c, t = (x.clone() for x in operands(n, v, d)[:3])
        e.requires_grad_(), c.requires_grad_()

        def step():
            flash_ce(e, c, t).backward()

        total = do_bench(step, warmup=5, rep=50, grad_to_none=[e, c])
        graph_ms = float("nan")
        try:  # the same step replayed from a CUDA graph: GPU time without launch overhead
            graph = torch.cuda.CUDAGraph()
            e.grad = c.grad = None
            with torch.cuda.graph(graph):
                step()
            graph_ms = do_bench(graph.replay, warmup=5, rep=50)
        except Exception as err:
            print(f"graph capture failed: {type(err).__name__}: {err}", flush=True)
        e.grad = c.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        grads_mib = (e.numel() + c.numel()) * 2 / 2**20  # dE and dC themselves, bf16
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20  # grads included
        flops = 2 * n * v * d * 4  # forward 2 matmuls (logits, softmax C), dC 2
        row = dict(N=n, V=v, D=d, fwd_ms=ms["fwd"], de_ms=ms["de"], dc_ms=ms["dc"], total_ms=total,
                   graph_ms=graph_ms, tflops=flops / total / 1e9, graph_tflops=flops / graph_ms / 1e9,
                   peak_mib=peak_mib, grads_mib=grads_mib)
        lines.append(row)
        print(" ".join(f"{k}={x:.4g}" if isinstance(x, float) else f"{k}={x}" for k, x in row.items()),
              flush=True)
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(lines[0]))
    w.writeheader()
    w.writerows(lines)
    write_text(text.getvalue(), out / "breakdown.csv")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dims", default="32,64,128,256")
    parser.add_argument("--workers", type=int, default=14)
    parser.add_argument("--budget-s", type=float, default=200.0, help="timing loop's time limit")
    parser.add_argument("--no-tune", action="store_true", help="only the breakdown")
    parser.add_argument("--vocab", type=int, default=TUNE_V, help="V the candidates are timed at")
    parser.add_argument("--regimes", default="few,many", help="few (N = 560) and/or many (N = 12,800) rows")
    parser.add_argument("--kernels", default=",".join(KERNELS), help="which of fwd, dc to tune")
    args = parser.parse_args(argv)
    dims = [int(x) for x in args.dims.split(",") if x.strip().isdigit()]
    if not dims or len(dims) != len(args.dims.split(",")) or any(d not in (32, 64, 128, 256) for d in dims):
        print(f"error: --dims takes a comma-separated subset of 32,64,128,256, not {args.dims!r}",
              file=sys.stderr)
        return 2
    regimes = tuple(r for r, name in enumerate(("few", "many")) if name in args.regimes.split(","))
    kernels = tuple(k for k in KERNELS if k in args.kernels.split(","))
    if not regimes or args.vocab < 1 or len(kernels) != len(args.kernels.split(",")):
        print(f"error: --regimes takes few and/or many, --vocab a positive size, --kernels fwd and/or dc; "
              f"got {args.regimes!r}, {args.vocab}, {args.kernels!r}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: tune_flash_ce needs a CUDA GPU", file=sys.stderr)
        return 2
    if problem := unwritable(args.out):
        print(f"error: cannot write --out {args.out}: {problem}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_tune:
        tune(dims, args.workers, args.budget_s, args.out, args.vocab, regimes, kernels)
    breakdown(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
