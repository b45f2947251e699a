"""The fused evaluation's group-max kernel (core/eval_kernels.py) at one batch, over launch tiles.

    python kernels_bench/tune_eval_kernel.py [--users 4096] [--items 207649] [--d 64]
        [--precision ieee|tf32] [--out DIR]

Times ``group_max`` over the whole catalog for one batch of users (fp32, random operands) at
each candidate of (users per program, groups per tile, tiles per program, warps), against what
it replaces on the matmul path: the fp32 GEMM of the same scores plus ``core.metrics.group_maxima``
(in 65,536-item chunks, as ``bench_eval`` runs it). Each candidate's maxima are checked equal to
the default tiles' bit for bit before it is timed (a tile that changed the arithmetic would be
refused, not timed). ``--precision tf32``: the prefilter's approximate maxima (TF32 tensor
cores) over ``TF32_CANDIDATES`` instead, each checked within half its margin of the exact (ieee)
maxima (``prefilter_eps``) and timed beside the exact kernel at its default tiles. Prints a
table, fastest first, and writes ``tune_eval_kernel.csv`` (``tune_eval_kernel_tf32.csv``) under
``--out``. CUDA only: without a GPU it says so and exits 2. The best line's tiles go into
``EVAL_GROUP_MAX_TILES`` / ``EVAL_TF32_TILES`` (or ``core.eval_kernels.TILES`` / ``TF32_TILES``)
once measured.
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

CANDIDATES = [(64, 1, 1, 4), (64, 2, 1, 4), (64, 2, 4, 8), (128, 1, 1, 8), (128, 2, 2, 8), (128, 1, 4, 8),
              (32, 4, 4, 4), (64, 4, 2, 8), (128, 4, 1, 8), (256, 1, 2, 8)]
TF32_CANDIDATES = [(128, 2, 2, 8), (128, 1, 4, 8), (128, 2, 1, 4), (128, 4, 1, 8), (128, 2, 4, 8), (64, 2, 2, 4),
                   (64, 4, 2, 4), (256, 1, 2, 8), (256, 2, 1, 8), (64, 8, 1, 4)]


def _ms(fn, reps: int = 20) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=5, rep=reps * 10))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4096)
    parser.add_argument("--items", type=int, default=207_649)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--precision", choices=("ieee", "tf32"), default="ieee")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: tune_eval_kernel needs a CUDA GPU (the kernels are compiled for it)", file=sys.stderr)
        return 2
    if args.out is not None and (problem := unwritable(args.out)):
        print(f"error: cannot write --out {args.out}: {problem}", file=sys.stderr)
        return 2
    from core import eval_kernels as ek
    from core.metrics import group_maxima

    g = torch.Generator(device="cuda").manual_seed(0)
    users = torch.randn(args.users, args.d, device="cuda", generator=g)
    catalog = torch.randn(args.items, args.d, device="cuda", generator=g) * 0.1
    flop = 2 * args.users * args.items * args.d
    rows = []

    def matmul_path():
        for lo in range(0, args.items, 65536):
            group_maxima(users @ catalog[lo:lo + 65536].T, 64)

    ms = _ms(matmul_path)
    rows.append(dict(what="fp32 GEMM + group_maxima (chunks of 65,536)", tiles="", ms=ms, tflops=flop / ms / 1e9))
    want = ek.group_max(users, catalog, 0, args.items, 64, tiles=ek.TILES)
    if args.precision == "tf32":  # beside the exact kernel; each candidate within half its margin
        ms = _ms(lambda: ek.group_max(users, catalog, 0, args.items, 64, tiles=ek.TILES))
        rows.append(dict(what="group_max ieee", tiles=",".join(map(str, ek.TILES)), ms=ms, tflops=flop / ms / 1e9))
        cn = torch.linalg.vector_norm(catalog.double(), dim=1)
        G = want.shape[1]
        gn = torch.cat([cn, cn.new_zeros(G * 64 - args.items)]).reshape(G, 64).amax(dim=1)
        bound = ek.prefilter_eps(args.d, **ek.TF32_EPS_ARGS) * torch.linalg.vector_norm(users.double(), dim=1)[:, None] * gn

    def agrees(got: torch.Tensor) -> bool:
        if args.precision == "ieee":
            return torch.equal(got, want)
        return float(((got.double() - want.double()).abs() / bound).max()) <= 0.5

    for tiles in (TF32_CANDIDATES if args.precision == "tf32" else CANDIDATES):
        name = f"group_max {args.precision}"
        try:
            got = ek.group_max(users, catalog, 0, args.items, 64, tiles=tiles, precision=args.precision)
        except Exception as err:  # a tile the compiler or the card refuses (registers, shared memory)
            rows.append(dict(what=name, tiles=",".join(map(str, tiles)), error=str(err).splitlines()[0][:80]))
            continue
        if not agrees(got):
            rows.append(dict(what=name, tiles=",".join(map(str, tiles)), error="maxima differ"))
            continue
        ms = _ms(lambda: ek.group_max(users, catalog, 0, args.items, 64, tiles=tiles,  # noqa: B023
                                      precision=args.precision))
        rows.append(dict(what=name, tiles=",".join(map(str, tiles)), ms=ms, tflops=flop / ms / 1e9))
    frame = pd.DataFrame(rows).sort_values("ms", na_position="last")
    print(f"{args.users} users x {args.items} items, D = {args.d}, fp32, {torch.cuda.get_device_name()}")
    cols = [c for c in ("what", "tiles", "ms", "tflops", "error") if c in frame]
    fmt = lambda x: f"{x:.3f}" if isinstance(x, float) and x == x else ("" if x != x else str(x))  # noqa: E731
    print(markdown_table(cols, ([fmt(r[c]) for c in cols] for r in frame.to_dict("records"))))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "tune_eval_kernel.csv" if args.precision == "ieee" else "tune_eval_kernel_tf32.csv"
        write_text(frame.to_csv(index=False), args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
