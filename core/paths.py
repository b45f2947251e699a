"""The repository root: where commands find gin files, data configs and default output folders.

Every command (``experiments/``, ``kernels_bench/``, ``tools/``) takes the root from here. Run
as a script (``python experiments/run.py``), a command first makes this checkout importable
with the one guarded line they all share::

    if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # parents[2] one folder deeper

Imports nothing (``experiments/run.py --help`` stays torch-free).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
