"""After pytest the temporary folder holds nothing the tests made (issue 23.11: torchrun's
``torchelastic_*`` folders, the kernel tests' ``mutant_*.py`` files and a 155 MB inductor cache
were left there). A pytest run of a test that leaves all of these behind, as those tests did
(through tmp_path, tempfile in the test's process and in a child process, and inductor's cache
folder), with this repository's conftest and TMPDIR at an empty folder: the folder is empty
afterwards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.child_env import REPO, child_env

LEAVES_FILES_BEHIND = r'''
import subprocess, sys, tempfile
from pathlib import Path

from tests.child_env import child_env


def test_leaves_files_behind(tmp_path):
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    (tmp_path / "kept").write_text("pytest keeps the last 3 sessions' tmp_path folders")
    Path(tempfile.mkdtemp(prefix="torchelastic_"), "x").write_text("torchrun never removes it")
    code = "import tempfile; open(tempfile.mkdtemp() + '/mutant_x.py', 'w').write('pass')"
    subprocess.run([sys.executable, "-c", code], env=child_env(), check=True)
    Path(cache_dir(), "compiled.so").write_bytes(b"inductor's cache")  # what torch.compile writes
'''


def test_pytest_leaves_nothing_in_the_temporary_folder(tmp_path: Path):
    temp, tests = tmp_path / "tmp", tmp_path / "tests"
    temp.mkdir()
    tests.mkdir()
    (tests / "test_leaves_files_behind.py").write_text(LEAVES_FILES_BEHIND)
    env = {k: v for k, v in child_env(TMPDIR=str(temp)).items() if k != "TORCHINDUCTOR_CACHE_DIR"}  # a user's
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           str(tests)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in temp.iterdir()) == []
