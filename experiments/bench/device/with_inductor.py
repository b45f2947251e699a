"""Runs a script with torch.inductor settings changed, for timing a setting before committing it:

    python experiments/bench/device/with_inductor.py NAME=VALUE[,NAME=VALUE...] SCRIPT [ARGS...]

Each ``NAME=VALUE`` (VALUE a Python literal) is set on ``torch._inductor.config`` before SCRIPT
runs as ``__main__`` in this process, so every torch.compile of the run uses it (e.g.
``combo_kernels=True``: independent small kernels launched as one).
"""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: with_inductor.py NAME=VALUE[,NAME=VALUE...] SCRIPT [ARGS...]")
    import torch._inductor.config as config

    for item in sys.argv[1].split(","):
        name, _, value = item.partition("=")
        if not hasattr(config, name):
            sys.exit(f"with_inductor: torch._inductor.config has no setting {name!r}")
        setattr(config, name, ast.literal_eval(value))
        print(f"with_inductor: {name} = {getattr(config, name)!r}", flush=True)
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
