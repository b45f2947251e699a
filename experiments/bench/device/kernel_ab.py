"""GPU time per kernel of one graphed beauty-like step's flash_ce and row-add, for comparing two
trees in one device call: ``PYTHONPATH=<tree> python <this> --label new``. CUDA only.

The shapes of the graphed step (call FF's profile): a packed bucket of ``--n`` rows (768) of
which the first ``--scored`` (600) have targets and the rest are filler (flash_ce skips their
blocks, as in the step), bf16 hidden states against the fp32 table's rows 1.. (V = 207,649,
D = 64), then the lookup's ``--n`` row gradients added into the table's gradient (skewed ids, id
0 on the filler rows). Each of ``--iters`` iterations runs ``flash_ce(e, c, t).backward()`` and
``add_rows_``; their device time per kernel (``experiments.output.kernel_profile``) is printed
as one JSON line (label, ms per kernel, total, launches).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root importable, unless PYTHONPATH names a tree
    sys.path.append(str(Path(__file__).resolve().parents[3]))  # after PYTHONPATH: the tree compared

import torch

from experiments.output import kernel_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    parser.add_argument("--n", type=int, default=768)
    parser.add_argument("--scored", type=int, default=600)
    parser.add_argument("--v", type=int, default=207_649)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args(argv)
    fce = importlib.import_module("core.losses.flash_ce")  # the module (the package exports the function)
    fce.SKIP_IGNORED_BLOCKS = True  # as in the graphed step's packed buckets
    from core.losses import IGNORE_INDEX, flash_ce
    from core.table_grad import add_rows_

    g = torch.Generator(device="cuda").manual_seed(0)
    n, v, d = args.n, args.v, args.d
    e = (torch.randn(n, d, device="cuda", generator=g) * 0.5).bfloat16().requires_grad_()
    table = torch.randn(v + 1, d, device="cuda", generator=g) * 0.05
    c = table[1:].clone().requires_grad_()
    t = torch.randint(0, v, (n,), device="cuda", generator=g)
    t[args.scored:] = IGNORE_INDEX
    ids = (float(v) ** torch.rand(n, device="cuda", generator=g, dtype=torch.float64)).long().clamp(1, v)
    ids[args.scored:] = 0
    rows = torch.randn(n, d, device="cuda", generator=g)
    grad_table = torch.zeros_like(table)

    def step():
        e.grad = c.grad = None
        flash_ce(e, c, t).backward()
        add_rows_(grad_table, ids, rows)

    for _ in range(10):
        step()
    prof = kernel_profile(step, steps=args.iters, top=12)
    print(json.dumps({"label": args.label, "n": n, "scored": args.scored, "v": v, "d": d,
                      "total_ms": round(prof["total_ms"], 4), "launches": prof["launches"],
                      "ms": {k["kernel"][:60]: round(k["ms"], 4) for k in prof["kernels"]},
                      "other_ms": round(prof["other_ms"], 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
