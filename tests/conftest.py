"""Shared pytest fixtures, and one temporary folder for the whole session, removed at its end."""

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.child_env import use_temp_folder

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # real logs live beside the repo, never inside it
_SESSION_TEMP = pytest.StashKey[Path]()


def pytest_configure(config):
    """Everything the tests and their child processes write to the temporary folder (pytest's
    tmp_path too) goes into one folder of the session, so that none of it outlives pytest."""
    config.stash[_SESSION_TEMP] = Path(tempfile.mkdtemp(prefix="sasrec-tests-"))
    use_temp_folder(config.stash[_SESSION_TEMP])


def pytest_unconfigure(config):
    shutil.rmtree(config.stash[_SESSION_TEMP], ignore_errors=True)


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
