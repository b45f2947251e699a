"""The environment of the tests and of their child processes.

``child_env``: the environment for a test's child Python process: this checkout first on
PYTHONPATH, and whatever the caller had there after it (packages installed with ``--target``, as
on the GPU machine; replacing PYTHONPATH hid gin-config there, and the checkout's gin/ folder of
configs was imported as ``gin`` instead).

``run_interpreted``: a test script in a child process under the Triton interpreter.

``use_temp_folder``: where the temporary files go, for this process and every child it starts
(they inherit os.environ, and ``child_env`` copies it): TMPDIR (tempfile, pytest's tmp_path,
torchrun's ``torchelastic_*`` folders, the kernels' mutant modules) and torch.compile's cache.
tests/conftest.py points both into one folder that it removes when pytest ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A child process's time limit where it checks kernels under the Triton interpreter: a guard
# against a hang, not a speed test. Such a child took ~5 min on one CI machine and over 10 on
# another (test_eval_prefilter, 2026-12-03: its old 600-s limit failed CI there); the suite
# itself has 90 minutes.
INTERPRETED_TIMEOUT_S = 2400


def child_env(**extra: str) -> dict[str, str]:
    inherited = os.environ.get("PYTHONPATH")
    path = str(REPO) if not inherited else os.pathsep.join([str(REPO), inherited])
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_interpreted(script: str, arg) -> dict:
    """``script`` run by a child Python under the Triton interpreter (``TRITON_INTERPRET=1`` must
    be set before Triton decorates the kernels) with ``json.dumps(arg)`` as its argument; the
    JSON object its last printed line holds."""
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(arg)], cwd=REPO,
                          env=child_env(TRITON_INTERPRET="1"), capture_output=True, text=True,
                          timeout=INTERPRETED_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def use_temp_folder(folder: Path) -> None:
    """Temporary files of this process and its children, and torch.compile's cache (else
    ``torchinductor_<user>`` in the system's temporary folder), go under ``folder``."""
    os.environ.update(TMPDIR=str(folder), TORCHINDUCTOR_CACHE_DIR=str(folder / "torchinductor"))
    tempfile.tempdir = None  # gettempdir() keeps its first answer: ask again
