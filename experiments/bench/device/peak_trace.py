"""What is allocated at a script's peak of CUDA memory, by where it was allocated:

    python experiments/bench/device/peak_trace.py [--top N] SCRIPT [ARGS...]

Records the caching allocator's history (``torch.cuda.memory._record_memory_history``) while
SCRIPT runs as ``__main__`` in this process, then replays the recorded allocations and frees in
order, finds the moment the most bytes were allocated (``max_memory_allocated``'s moment, if
the script never reset it before) and prints the blocks alive then, summed by their innermost
frame under ``core/``, ``experiments/`` or ``kernels_bench/`` (named by its last two path parts,
e.g. ``data/batching.py:48 from_data``; else the innermost frame's file name). Run
from the root of the tree to measure, with that tree on ``PYTHONPATH``: this file puts nothing on
``sys.path``, so it can measure another tree than its own.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from collections import defaultdict

GIB = 2**30
REPO_DIRS = ("/core/", "/experiments/", "/kernels_bench/")


def site(frames: list[dict]) -> str:
    """The innermost repository frame of an allocation (file:line function), else its innermost."""
    for f in frames:
        if any(d in f["filename"] for d in REPO_DIRS) and "peak_trace" not in f["filename"]:
            name = f["filename"].split("/")[-2:]
            return f"{'/'.join(name)}:{f['line']} {f['name']}"
    return f"{frames[0]['filename'].split('/')[-1]}:{frames[0]['line']} {frames[0]['name']}" if frames else "?"


def peak_blocks(events: list[dict]) -> tuple[int, dict[int, tuple[int, str]]]:
    """(bytes, {addr: (size, site)}) at the moment the most bytes were allocated."""
    live: dict[int, tuple[int, str]] = {}
    total = best = 0
    at_best: dict[int, tuple[int, str]] = {}
    for e in events:
        if e["action"] == "alloc":
            live[e["addr"]] = (e["size"], site(e.get("frames", [])))
            total += e["size"]
            if total > best:
                best, at_best = total, dict(live)
        elif e["action"] == "free_completed" and e["addr"] in live:
            total -= live.pop(e["addr"])[0]
    return best, at_best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    a = parser.parse_args()
    import torch

    torch.cuda.memory._record_memory_history(max_entries=2_000_000)
    sys.argv = [a.script, *a.args]
    try:
        runpy.run_path(a.script, run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    snap = torch.cuda.memory._snapshot()
    events = [e for trace in snap["device_traces"] for e in trace]
    best, blocks = peak_blocks(events)
    by_site: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for size, where in blocks.values():
        by_site[where][0] += size
        by_site[where][1] += 1
    print(f"peak_trace: {len(events)} events recorded; at the peak {best / GIB:.3f} GiB in {len(blocks)} blocks "
          f"(max_memory_allocated {torch.cuda.max_memory_allocated() / GIB:.3f} GiB)")
    print("| MiB | blocks | allocated at |\n|---:|---:|---|")
    for where, (size, n) in sorted(by_site.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"| {size / 2**20:.1f} | {n} | {where} |")


if __name__ == "__main__":
    main()
