"""Runs a script with flash_ce's tile table overridden from a tuning run's best.json:

    python experiments/bench/device/with_tiles.py BEST_JSON SCRIPT [ARGS...]

``best.json`` is what ``kernels_bench/tune_flash_ce.py`` writes ({D: {kernel: [few, many]}}); its
entries replace ``core.losses.flash_ce._TILES``' before SCRIPT runs as ``__main__`` in this process,
so a call can time tiles it has just tuned without a commit in between. Kernels or head dims the
file lacks keep the committed tiles.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

import core.losses.flash_ce  # noqa: E402,F401  (the module; core.losses.flash_ce is also the function)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: with_tiles.py BEST_JSON SCRIPT [ARGS...]")
    fce = sys.modules["core.losses.flash_ce"]
    for d, kernels in json.loads(Path(sys.argv[1]).read_text()).items():
        for kernel, pair in kernels.items():
            fce._TILES[int(d)][kernel] = tuple(tuple(cfg) for cfg in pair)
            print(f"with_tiles: D={d} {kernel} {fce._TILES[int(d)][kernel]}", flush=True)
    script = sys.argv[2]
    sys.argv = sys.argv[2:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
