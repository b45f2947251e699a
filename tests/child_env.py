"""The environment for a test's child Python process: this checkout first on PYTHONPATH, and
whatever the caller had there after it (packages installed with ``--target``, as on the GPU
machine; replacing PYTHONPATH hid gin-config there, and the checkout's gin/ folder of configs
was imported as ``gin`` instead)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict[str, str]:
    inherited = os.environ.get("PYTHONPATH")
    path = str(REPO) if not inherited else os.pathsep.join([str(REPO), inherited])
    return {**os.environ, "PYTHONPATH": path, **extra}
