"""Turns a raw interaction log (or a synthetic preset) into HDF5 sequence shards.

Examples::

    python tools/prepare_data.py --format ml20m --download --raw data/raw/ml-20m-ratings.csv --out data/ml20m
    python tools/prepare_data.py --format amazon --download --raw data/raw/ratings_Beauty.csv --out data/beauty
    python tools/prepare_data.py --format generic --raw log.tsv --columns user=uid,item=sku,time=ts --out data/mine
    python tools/prepare_data.py --format synthetic --preset tiny --out data/tiny

The work is ``core.data.prepare.prepare`` (the same function a run calls for a configured
dataset). Bad input, or an --out that fills the disk, prints one ``error: ...`` line and exits 1
with nothing written to --out; bad arguments exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.atomic import unwritable
from core.data.prepare import Recipe, prepare
from core.data.readers import FORMATS
from core.data.shards import STATS_FILE, DataFormatError
from core.data.synthetic import PRESETS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--format", required=True, choices=(*FORMATS, "synthetic"), dest="fmt")
    p.add_argument("--raw", type=Path, help="raw log to read (with --download: where to save it)")
    p.add_argument("--out", type=Path, required=True, help="new dataset folder (must not exist)")
    p.add_argument("--min-user", type=int, default=3, help="k-core: interactions per user (>= 3)")
    p.add_argument("--min-item", type=int, default=3, help="k-core: interactions per item")
    p.add_argument("--single-pass", action="store_true", help="filter once instead of to a fixed point")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="keep exact duplicate (user, item, time) rows (dropped and counted by default)")
    p.add_argument("--columns", help="generic format: user=COL,item=COL[,time=COL]")
    p.add_argument("--download", action="store_true",
                   help="fetch ML-20M (ml20m) or Amazon Beauty (amazon) to --raw unless it exists")
    p.add_argument("--url", help="download from this address instead of the official one")
    p.add_argument("--preset", choices=tuple(PRESETS), help="synthetic preset")
    p.add_argument("--seed", type=int, default=0, help="synthetic seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def recipe(args: argparse.Namespace) -> Recipe:
    if args.fmt == "synthetic":
        return Recipe(fmt="synthetic", preset=args.preset, seed=args.seed, raw=args.raw, download=args.download)
    return Recipe(fmt=args.fmt, raw=args.raw, columns=args.columns, min_user=args.min_user,
                  min_item=args.min_item, iterative=not args.single_pass,
                  keep_duplicates=args.keep_duplicates, download=args.download, url=args.url)


def summary(out: Path) -> str:
    stats = json.loads((out / STATS_FILE).read_text())
    length = stats["length"]
    dropped = (stats.get("duplicates") or {}).get("rows", 0) if (stats.get("duplicates") or {}).get("dropped") else 0
    return (
        f"prepared {out}: {stats['n_users']:,} users, {stats['n_items']:,} items, "
        f"{stats['n_interactions']:,} interactions; sequence length min {length['min']}, "
        f"median {length['median']:g}, mean {length['mean']:.1f}, max {length['max']}"
        + (f"; {dropped:,} exact duplicate rows dropped" if dropped else "")
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        recipe(args).check()
        problem = unwritable(args.out)
        if problem:
            raise DataFormatError(f"cannot write --out {args.out}: {problem}")
    except DataFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        out = prepare(recipe(args), args.out, progress=not args.quiet and sys.stderr.isatty())
    except (DataFormatError, OSError, ValueError) as err:  # DownloadError and FileExistsError are OSErrors
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(summary(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
