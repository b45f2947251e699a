"""Prepare-speed benchmark: a synthetic ML-20M-sized ``ratings.csv`` through tools/prepare_data.py.

Writes the synthetic ``ml20m-like`` log in the exact ML-20M layout (header
``userId,movieId,rating,timestamp``, rows sorted by user then movie id as GroupLens ships them,
so the prepare step has to time-sort) into a temporary folder, then times
``tools/prepare_data.py --format ml20m`` in a child process and reports its wall time and peak
resident memory (``ru_maxrss`` of that child alone, via ``os.wait4``).

    python experiments/bench/bench_prepare.py [--preset ml20m-like] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import pandas as pd

from core.atomic import atomic_file
from core.data.shards import load_sequences
from core.data.synthetic import PRESETS, generate

REPO = Path(__file__).resolve().parents[2]


def write_ml20m_csv(path: Path, *, preset: str, seed: int) -> None:
    """Writes a synthetic log as an ML-20M ``ratings.csv``."""
    offsets, items = generate(**PRESETS[preset], seed=seed)
    rng = np.random.default_rng(seed + 1)
    n_users, n = len(offsets) - 1, len(items)
    lengths = np.diff(offsets)
    users = np.repeat(np.arange(n_users), lengths)
    # Timestamps increase along each sequence; a third of the gaps are 0, so ties are common.
    gaps = np.where(rng.random(n) < 0.3, 0, rng.integers(1, 86_400, n))
    gaps[offsets[:-1]] = rng.integers(822_873_600, 1_427_846_400, n_users)  # 1996..2015
    clock = np.cumsum(gaps)
    timestamp = clock - np.repeat(clock[offsets[:-1]] - gaps[offsets[:-1]], lengths)
    movie_ids = np.sort(rng.choice(131_262, PRESETS[preset]["n_items"], replace=False) + 1)
    movie = movie_ids[items - 1]
    order = np.lexsort((movie, users))  # GroupLens order: by user, then by movie id
    frame = pd.DataFrame(
        {
            "userId": users[order] + 1,
            "movieId": movie[order],
            "rating": rng.integers(1, 11, n)[order] / 2,
            "timestamp": timestamp[order],
        }
    )
    with atomic_file(path) as f:
        frame.to_csv(f, index=False, float_format="%.1f", chunksize=1_000_000)


def run_prepare(raw: Path, out: Path) -> dict:
    """Runs the CLI in a child process; returns wall time, CPU time and the child's peak RSS."""
    cmd = [sys.executable, str(REPO / "tools" / "prepare_data.py"), "--format", "ml20m",
           "--raw", str(raw), "--out", str(out), "--quiet"]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"prepare failed with exit code {child.returncode}")
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),  # ru_maxrss is in KiB on Linux
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="ml20m-like", choices=tuple(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-csv", type=Path, help=argparse.SUPPRESS)  # internal: the writer child
    args = p.parse_args()
    if args.write_csv:
        write_ml20m_csv(args.write_csv, preset=args.preset, seed=args.seed)
        return
    with tempfile.TemporaryDirectory(prefix="bench_prepare-") as tmp:
        raw = Path(tmp) / "ratings.csv"
        t0 = time.perf_counter()
        # A separate process writes the CSV, so this one stays small: a child forked from a
        # big parent could otherwise be charged the parent's pages in its peak RSS.
        subprocess.run([sys.executable, __file__, "--preset", args.preset, "--seed", str(args.seed),
                        "--write-csv", str(raw)], check=True)
        os.sync()  # flush the fresh file so write-back does not overlap the timed run
        print(f"wrote {raw.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t0:.0f} s")
        result = run_prepare(raw, Path(tmp) / "prepared")
        data = load_sequences(Path(tmp) / "prepared")
    result = {
        "preset": args.preset,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "n_interactions": len(data.items),
        **result,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
