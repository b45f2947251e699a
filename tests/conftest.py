"""Shared pytest fixtures."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # real logs live beside the repo, never inside it


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data folder of real logs; skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (real interaction logs) not present")
    return SHARED_DATA
