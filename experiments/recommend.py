"""Top-k recommendations from a trained run, in the catalog's own ids.

    python experiments/recommend.py --run runs/beauty5core_cce --all --k 10 --out recs.csv
    python experiments/recommend.py --run RUN_DIR --users users.txt --k 20 --out recs.csv
    python experiments/recommend.py --run RUN_DIR --all --out recs.csv --embeddings emb/

recs.csv has one row per (user, rank): ``user,rank,item,score``, best first, items the user
already has masked. ``--users`` reads raw user ids, one per line (blank lines and lines starting
with ``#`` skipped). ``--embeddings DIR`` also writes DIR/item_embeddings.npy (n_items, D)
float32 and DIR/item_ids.txt (the raw id of each row) for an inner-product ANN index.
Uses the GPU when there is one (``--device`` to choose). ``--out``, ``--embeddings`` and
``--device`` are checked before the run is loaded (one ``error:`` line, exit 2, nothing
written); outputs are written atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder (experiments/run.py wrote it)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", help="file of raw user ids, one per line")
    who.add_argument("--all", action="store_true", help="every user of the run's data")
    parser.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    parser.add_argument("--out", required=True, help="CSV to write")
    parser.add_argument("--context", choices=("full", "test"), default="full",
                        help="full: all of a user's interactions (default); test: what the test "
                             "split ranked (train + validation item)")
    parser.add_argument("--no-mask-history", action="store_true",
                        help="allow items the user already has")
    parser.add_argument("--embeddings", help="also write item embeddings + ids into this folder")
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1")
    return parser.parse_args(argv)


def _read_users(path: str) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    users = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not users:
        raise ValueError(f"{path} holds no user ids")
    return users


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuses (ValueError, one line) an --out, --embeddings or --device that cannot be used,
    before anything is loaded, computed or written."""
    from core.atomic import unwritable
    from core.env import usable_device

    problem = unwritable(args.out, file=True)
    if problem:
        raise ValueError(f"cannot write --out {args.out}: {problem}")
    problem = args.embeddings and unwritable(args.embeddings)
    if problem:
        raise ValueError(f"cannot write --embeddings {args.embeddings}: {problem}")
    usable_device(args.device, "--device")


def _write(args: argparse.Namespace, recs, vectors, ids) -> None:
    """recs.csv, then the embeddings folder, each file atomically."""
    import numpy as np

    from core.atomic import atomic_file, write_text

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as f:
        f.write(recs.to_csv(index=False).encode())
    if args.embeddings:
        folder = Path(args.embeddings)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(folder / "item_embeddings.npy") as f:
            np.save(f, vectors)
        write_text("".join(f"{i}\n" for i in ids), folder / "item_ids.txt")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Heavy imports after parsing: --help and argument errors answer at once.
    from core.recommendations import RecommendError, item_embeddings, recommend
    from core.training import RunFolderError, load_run

    try:
        _check_outputs(args)
        users = None if args.all else _read_users(args.users)
        run = load_run(args.run, device=args.device)
        recs = recommend(run, users=users, k=args.k, mask_history=not args.no_mask_history,
                         context=args.context)
        vectors, ids = item_embeddings(run) if args.embeddings else (None, None)
        _write(args, recs, vectors, ids)  # e.g. a disk that fills up: one line too
    except (OSError, ValueError, RecommendError, RunFolderError) as err:
        print(f"error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{recs['user'].nunique()} users x top-{args.k} -> {args.out}"
          + (f"; {len(vectors)} item embeddings -> {args.embeddings}" if args.embeddings else ""))
    print(recs.head(10).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
