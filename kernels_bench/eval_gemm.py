"""The evaluation's fp32 scoring GEMM (``core.evaluation.ModelChunks``) in other operand layouts.

    python kernels_bench/eval_gemm.py [--users 4096] [--items 207649] [--d 64] [--chunk 65536] [--out DIR]

Scores stay fp32 (exact ranks and ties), so cuBLAS runs a SIMT FFMA kernel, and which one it picks
depends on the operands' layout. For one batch of users against the whole catalog in chunks (as
``bench_eval`` runs it) this times each layout below and checks its scores equal the current
layout's bit for bit (a layout that changes the arithmetic is reported, not used):
- ``u @ C[lo:hi].T``: today's (the catalog (V, D) row-major, a transposed operand);
- ``mm(u, Ct[:, lo:hi])``: the catalog transposed once per split to (D, V), column slices;
- ``mm(u, Ct_chunk)``: each chunk transposed once per split to a contiguous (D, w);
- ``mm(u, C[lo:hi].T, out=buf)``: today's into a preallocated buffer.
Prints a table (ms a batch, TFLOP/s) and writes ``eval_gemm.csv`` under ``--out``. CUDA only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import torch

from core.atomic import unwritable, write_text
from experiments.output import markdown_table


def layouts(users: torch.Tensor, catalog: torch.Tensor, chunk: int) -> dict:
    """name -> fn() returning the list of (B, w) chunk scores."""
    V = catalog.shape[0]
    ranges = [(lo, min(lo + chunk, V)) for lo in range(0, V, chunk)]
    ct = catalog.T.contiguous()
    ct_chunks = [catalog[lo:hi].T.contiguous() for lo, hi in ranges]
    bufs = [torch.empty(users.shape[0], hi - lo, device=users.device) for lo, hi in ranges]
    return {
        "u @ C[lo:hi].T (today)": lambda: [users @ catalog[lo:hi].T for lo, hi in ranges],
        "mm(u, Ct[:, lo:hi])": lambda: [torch.mm(users, ct[:, lo:hi]) for lo, hi in ranges],
        "mm(u, Ct_chunk)": lambda: [torch.mm(users, c) for c in ct_chunks],
        "mm(u, C[lo:hi].T, out=buf)": lambda: [torch.mm(users, catalog[lo:hi].T, out=b)
                                               for (lo, hi), b in zip(ranges, bufs)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4096)
    parser.add_argument("--items", type=int, default=207_649)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=65_536)
    parser.add_argument("--out", type=Path, default=Path("runs/eval_gemm"))
    args = parser.parse_args(argv)
    if min(args.users, args.items, args.d, args.chunk) < 1:
        print("error: --users, --items, --d and --chunk must be positive", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: eval_gemm needs a CUDA GPU", file=sys.stderr)
        return 2
    if problem := unwritable(args.out):
        print(f"error: cannot write --out {args.out}: {problem}", file=sys.stderr)
        return 2
    from triton.testing import do_bench

    gen = torch.Generator(device="cuda").manual_seed(0)
    users = torch.randn(args.users, args.d, device="cuda", generator=gen)
    catalog = torch.randn(args.items, args.d, device="cuda", generator=gen) * 0.05
    fns = layouts(users, catalog, args.chunk)
    reference = fns["u @ C[lo:hi].T (today)"]()
    flops = 2 * args.users * args.items * args.d
    rows = []
    for name, fn in fns.items():
        same = all(torch.equal(a, b) for a, b in zip(fn(), reference))
        ms = float(do_bench(fn, warmup=5, rep=200))
        rows.append({"layout": name, "ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1),
                     "bit_identical": same})
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(frame.to_csv(index=False), args.out / "eval_gemm.csv")
    print(f"{torch.cuda.get_device_name()}; {args.users} users x {args.items:,} items x D {args.d}, "
          f"chunks of {args.chunk:,}, fp32")
    print(markdown_table(list(frame.columns), frame.astype(str).values.tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
