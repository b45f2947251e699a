"""Turns a raw interaction log (or a synthetic preset) into HDF5 sequence shards.

Examples::

    python tools/prepare_data.py --format ml20m --download --raw data/raw/ml-20m-ratings.csv --out data/ml20m
    python tools/prepare_data.py --format amazon --download --raw data/raw/ratings_Beauty.csv --out data/beauty
    python tools/prepare_data.py --format generic --raw log.tsv --columns user=uid,item=sku,time=ts --out data/mine
    python tools/prepare_data.py --format synthetic --preset tiny --out data/tiny

Bad input prints one ``error: ...`` line and exits 1 with nothing written to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from core.data.download import fetch
from core.data.prepare import check_filters, prepare_dataset
from core.data.readers import FORMATS
from core.data.shards import STATS_FILE, DataFormatError
from core.data.synthetic import PRESETS, write_synthetic

DOWNLOADS = {"ml20m": "ml20m", "amazon": "beauty"}  # --format -> what --download fetches


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--format", required=True, choices=(*FORMATS, "synthetic"), dest="fmt")
    p.add_argument("--raw", type=Path, help="raw log to read (with --download: where to save it)")
    p.add_argument("--out", type=Path, required=True, help="new dataset folder (must not exist)")
    p.add_argument("--min-user", type=int, default=3, help="k-core: interactions per user (>= 3)")
    p.add_argument("--min-item", type=int, default=3, help="k-core: interactions per item")
    p.add_argument("--single-pass", action="store_true", help="filter once instead of to a fixed point")
    p.add_argument("--columns", help="generic format: user=COL,item=COL[,time=COL]")
    p.add_argument("--download", action="store_true", help="fetch ML-20M (ml20m) or Amazon Beauty (amazon) to --raw")
    p.add_argument("--url", help="download from this address instead of the official one")
    p.add_argument("--preset", choices=tuple(PRESETS), help="synthetic preset")
    p.add_argument("--seed", type=int, default=0, help="synthetic seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be rejected before any work starts."""
    if args.out.exists():
        raise FileExistsError(f"output directory already exists: {args.out}")
    if args.fmt == "synthetic":
        if args.preset is None or args.raw is not None or args.download:
            raise DataFormatError("--format synthetic takes --preset (and --seed), not --raw or --download")
        return
    if args.raw is None:
        raise DataFormatError("--raw is required")
    if args.download and args.fmt not in DOWNLOADS:
        raise DataFormatError(f"--download fetches ml20m or amazon (Beauty), not {args.fmt}")
    if args.url and not args.download:
        raise DataFormatError("--url goes with --download")
    if args.columns and args.fmt != "generic":
        raise DataFormatError("--columns applies to --format generic only")
    check_filters(args.min_user, args.min_item)


def summary(out: Path) -> str:
    stats = json.loads((out / STATS_FILE).read_text())
    length = stats["length"]
    return (
        f"prepared {out}: {stats['n_users']:,} users, {stats['n_items']:,} items, "
        f"{stats['n_interactions']:,} interactions; sequence length min {length['min']}, "
        f"median {length['median']:g}, mean {length['mean']:.1f}, max {length['max']}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    progress = not args.quiet
    try:
        check_args(args)
        if args.fmt == "synthetic":
            out = write_synthetic(args.out, preset=args.preset, seed=args.seed)
        else:
            if args.download:
                if args.raw.exists():
                    logging.info("%s exists: using it instead of downloading", args.raw)
                else:
                    fetch(DOWNLOADS[args.fmt], args.raw, url=args.url, progress=progress)
            out = prepare_dataset(
                raw=args.raw,
                fmt=args.fmt,
                out_dir=args.out,
                min_user=args.min_user,
                min_item=args.min_item,
                iterative=not args.single_pass,
                columns=args.columns,
                progress=progress,
            )
    except (DataFormatError, OSError, ValueError) as err:  # DownloadError and FileExistsError are OSErrors
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
