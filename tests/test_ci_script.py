""".ci/run with fake python3 / pip / pytest: it installs as the README says, runs pytest, passes
pytest's status on, and leaves no virtual environment behind in the temporary folder, whatever
the outcome (issue 15.10: each call left a 2.2 GB environment there)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / ".ci" / "run"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# `python3 -m venv DIR` makes DIR/bin/activate, which puts fake pip and pytest first on PATH;
# each logs its argv to $CI_LOG and exits with $FAKE_PIP_RC / $FAKE_PYTEST_RC, or waits for
# a signal with FAKE_PYTEST_RC=wait.
FAKE_PYTHON = r"""#!/usr/bin/env bash
set -eu
[ "$1 $2" = "-m venv" ] || { echo "fake python3: unexpected $*" >&2; exit 99; }
mkdir -p "$3/bin"
echo "export PATH=\"$3/bin:\$PATH\"" > "$3/bin/activate"
head -c 100000 /dev/zero > "$3/bin/weight"
for tool in pip pytest; do
  cat > "$3/bin/$tool" <<TOOL
#!/usr/bin/env bash
echo "$tool \$*" >> "\$CI_LOG"
rc=\${FAKE_$(echo $tool | tr a-z A-Z)_RC:-0}
if [ "\$rc" = wait ]; then touch "\$CI_LOG.waiting"; sleep 60; exit 0; fi
exit "\$rc"
TOOL
  chmod +x "$3/bin/$tool"
done
"""


def _env(tmp_path: Path, **extra: str) -> dict:
    fake_bin, temp = tmp_path / "bin", tmp_path / "tmp"
    fake_bin.mkdir(exist_ok=True)
    temp.mkdir(exist_ok=True)
    python = fake_bin / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", TMPDIR=str(temp),
               CI_LOG=str(tmp_path / "log"))
    env.pop("VIRTUAL_ENV", None)
    return env | extra


@pytest.mark.parametrize("pip_rc, pytest_rc, expected", [
    ("0", "0", 0),  # green
    ("0", "1", 1),  # failing tests: pytest's status
    ("0", "5", 1),  # nothing collected is a failure here
    ("1", "0", 1),  # the install failed: pytest never ran
])
def test_ci_leaves_no_environment_behind(tmp_path: Path, pip_rc, pytest_rc, expected):
    env = _env(tmp_path, FAKE_PIP_RC=pip_rc, FAKE_PYTEST_RC=pytest_rc)
    done = subprocess.run([str(CI)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == expected, done.stderr
    log = (tmp_path / "log").read_text().splitlines()
    assert log[0] == 'pip install -q -e .[test,bench] torch==2.13.0'  # the README's command
    assert log[1:] == ([] if pip_rc != "0" else ["pytest "])
    assert list((tmp_path / "tmp").iterdir()) == []


def test_ci_interrupted_leaves_no_environment_behind(tmp_path: Path):
    env = _env(tmp_path, FAKE_PYTEST_RC="wait")
    # Ctrl-C as at a terminal: a shell cannot trap a signal it was started with ignored (as under
    # `cmd &` in a script, where pytest itself may run), so the script starts with SIGINT's default.
    proc = subprocess.Popen([str(CI)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for _ in range(600):  # until the fake pytest runs (a poll, not a timing assumption)
            if (tmp_path / "log.waiting").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert (tmp_path / "log.waiting").exists(), proc.stderr.read()
        assert list((tmp_path / "tmp").iterdir())  # the environment exists while it runs
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc != 0
    assert list((tmp_path / "tmp").iterdir()) == []
