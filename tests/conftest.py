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


@pytest.fixture(autouse=True)
def _gin_bindings_end_with_the_test():
    """A test that parses gin configs (run.main, bench_epoch.main) leaves global bindings behind;
    clear them so that a later test calling a configurable directly sees only its own arguments."""
    yield
    import gin

    gin.clear_config()
