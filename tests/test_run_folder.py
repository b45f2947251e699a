"""Run folders that never lie (issue 15): resume checks before any write, the lock, bad values as
one error line with no folder left, and load_run rebuilding a trained model without gin."""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import atomic, checkpoint
from core.data.batching import DeviceSequences
from core.data.shards import load_sequences
from core.data.synthetic import write_synthetic
from core.evaluation import count_train_users, default_eval_batch_size, evaluate_model
from core.model import SASRec
from core.training import RunFolderBusy, load_run, train_flat
from experiments import run
from tests.test_run_cli import tiny  # noqa: F401  (the fixture: fast quickstart bindings)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished one-epoch quickstart run (copied per test by ``_copy``)."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert run.main(["--gin", "gin/quickstart.gin", "--out", str(out), *tiny,
                     "--gin_bindings", "train.epochs = 1"]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- issue 15.1 / 15.2: --resume checks the new bindings before writing anything ---------------


@pytest.mark.parametrize("binding, setting", [
    ("SASRec.dim = 32", "SASRec.dim"),  # a traceback once, and the folder could not resume again
    ("SASRec.dropout = 0.5", "SASRec.dropout"),
    ("train.batch_size = 128", "train.batch_size"),  # refused, yet config.gin said 128
    ("train.lr = 0.01", "train.lr"),  # silently trained with the old lr
    ("train.weight_decay = 0.1", "train.weight_decay"),
    ("train.seed = 1", "train.seed"),
    ("train.loss_fn = @cce", "train.loss_fn"),
    ("train.max_len = 20", "train.max_len"),
    # named before any data is read or prepared (the attack suite's 15.01e: the other data was
    # written into the cache first, then data.n_users was refused)
    ("dataset.synthetic_overrides = {'n_users': 140}", "dataset.synthetic_overrides"),
])
def test_a_resume_that_changes_the_run_is_refused_before_any_write(finished, tmp_path, capsys,
                                                                   binding, setting):
    out = _copy(finished, tmp_path / "run")
    before = _files(out)
    status = run.main(["--resume", "--out", str(out), "--gin_bindings", "train.epochs = 2",
                       "--gin_bindings", binding])
    assert status == 2
    line = _error_line(capsys)
    assert f"--resume: {setting} is" in line and "the run trained with" in line
    assert _files(out) == before  # config.gin, checkpoints, log.txt: all untouched


def test_a_resume_may_change_the_schedule_and_config_gin_says_so(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path / "run")
    assert run.main(["--resume", "--out", str(out), "--gin_bindings", "train.epochs = 2",
                     "--gin_bindings", "train.patience = 3", "--gin_bindings", "train.eval_every = 1",
                     "--gin_bindings", "train.eval_batch_size = 7",
                     "--gin_bindings", "train.nan_check_every = 5"]) == 0
    config = (out / "config.gin").read_text()
    assert "train.epochs = 2" in config and "train.eval_batch_size = 7" in config
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


# --- issue 15.3: one process at a time ---------------------------------------------------------


def test_a_live_lock_refuses_with_one_line_and_touches_nothing(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path / "run")
    with open(out / ".lock", "a+") as held:  # another run, still writing
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()} {socket.gethostname()}\n")
        held.flush()
        before = _files(out)
        assert run.main(["--resume", "--out", str(out), "--gin_bindings", "train.epochs = 2"]) == 1
        assert "is in use" in _error_line(capsys)
        assert _files(out) == before
        # a fresh run with the same --out at the same time: refused as well
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        with open(fresh / ".lock", "a+") as other:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(RunFolderBusy):
                train_flat(data=load_sequences(_tiny_data(tmp_path)), out_dir=fresh, epochs=1, **FAST)
            assert sorted(p.name for p in fresh.iterdir()) == [".lock"]


def test_resuming_a_run_still_in_its_first_epoch_says_it_is_in_use(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path / "run")
    (out / "checkpoint.pt").unlink()  # a run that has not finished an epoch yet
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{live.pid} {socket.gethostname()}\n")
        before = _files(out)
        assert run.main(["--resume", "--out", str(out)]) == 1
        assert "is in use by pid" in _error_line(capsys)  # not "no checkpoint"
        assert _files(out) == before
    finally:
        live.kill()
        live.wait()


def test_duplicates_dropped_by_the_preparation_reach_log_and_metrics(tmp_path):
    raw = tmp_path / "dup.csv"
    rows = [f"{u},{i},{t}" for u in range(40) for t, i in enumerate((u + k) % 25 for k in range(6))]
    raw.write_text("user,item,time\n" + "\n".join(rows + rows[:30]) + "\n")  # 30 rows twice
    out = tmp_path / "run"
    assert run.main(["--gin", "gin/quickstart.gin", "--out", str(out),
                     "--gin_bindings", "dataset.synthetic_preset = None",
                     "--gin_bindings", f"dataset.raw = '{raw}'", "--gin_bindings", "dataset.fmt = 'generic'",
                     "--gin_bindings", "dataset.columns = 'user=user,item=item,time=time'",
                     "--gin_bindings", f"dataset.cache_dir = '{tmp_path / 'cache'}'",
                     "--gin_bindings", "train.epochs = 1", "--gin_bindings", "train.device = 'cpu'",
                     "--gin_bindings", "train.show_progress = False"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["duplicates"] == {"rows": 30, "dropped": True}
    assert "30 exact duplicate (user, item, time) rows dropped" in (out / "log.txt").read_text()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path / "run")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(f"{dead.pid} {socket.gethostname()}\n")  # killed -9 mid-run
    assert run.main(["--resume", "--out", str(out), "--gin_bindings", "train.epochs = 2"]) == 0
    assert f"took over the stale lock of pid {dead.pid}" in (out / "log.txt").read_text()
    assert (out / ".lock").read_text() == ""  # released at the end


# --- issue 15.7: every bad value is one error line, exit 2, no folder --------------------------


@pytest.mark.parametrize("binding", ["train.epochs = 'abc'", "train.lr = 'fast'", "train.batch_size = 0",
                                     "train.max_len = 0", "train.epochs = 0", "train.lr = -1.0",
                                     "train.seed = -3", "train.eval_batch_size = 0",
                                     "train.device = 'tpu:9'", "train.compile = 'fastest'"])
def test_a_bad_value_is_one_error_line_and_leaves_no_folder(tiny, tmp_path, capsys, binding):
    out = tmp_path / "runs" / "r"
    assert run.main(["--gin", "gin/quickstart.gin", "--out", str(out), *tiny,
                     "--gin_bindings", binding]) == 2
    name = binding.split(" =")[0]
    assert name in _error_line(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("under", [True, False], ids=["under_a_file", "a_file"])
def test_an_out_under_a_regular_file_is_one_error_line(tiny, tmp_path, capsys, under):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "r" if under else tmp_path / "file"
    assert run.main(["--gin", "gin/quickstart.gin", "--out", str(out), *tiny]) == 2
    assert "is a file" in _error_line(capsys)
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.parametrize("under", [True, False], ids=["under_a_file", "a_file"])
def test_a_cache_dir_that_is_or_is_under_a_file_is_one_error_line(tiny, tmp_path, capsys, under):
    """Runs as root too (issue 23.11): a file where the data cache's folder goes was a traceback
    (FileExistsError, NotADirectoryError) after the data had been generated."""
    (tmp_path / "file").write_text("not a folder")
    cache = tmp_path / "file" / "cache" if under else tmp_path / "file"
    assert run.main(["--gin", "gin/quickstart.gin", "--out", str(tmp_path / "r"), *tiny,
                     "--gin_bindings", f"dataset.cache_dir = '{cache}'"]) == 2
    line = _error_line(capsys)
    assert "dataset.cache_dir" in line and f"{tmp_path / 'file'} is a file" in line
    assert (tmp_path / "file").read_text() == "not a folder" and not (tmp_path / "r").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_out_is_one_error_line(tiny, tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert run.main(["--gin", "gin/quickstart.gin", "--out", str(locked / "r"), *tiny]) == 2
        assert "not writable" in _error_line(capsys)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("how", ["no write permission", "read-only file system"])
def test_an_unwritable_out_is_one_error_line_as_root_too(tiny, tmp_path, capsys, monkeypatch, how):
    """The test above skips as root (CI's user), where a folder is unwritable only on a
    read-only mount: both refusals are faked here, so the one-line path runs everywhere."""
    parent = tmp_path / "ro"
    parent.mkdir()
    if how == "no write permission":
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == parent else real_access(p, mode))
        expected = "not writable"
    else:
        real_mkdir = Path.mkdir

        def read_only(self, *args, **kwargs):  # the mount of ``parent`` only (the data cache is elsewhere)
            if parent not in self.parents:
                return real_mkdir(self, *args, **kwargs)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        monkeypatch.setattr(Path, "mkdir", read_only)
        expected = os.strerror(errno.EROFS)
    assert run.main(["--gin", "gin/quickstart.gin", "--out", str(parent / "r"), *tiny]) == 2
    line = _error_line(capsys)
    assert "cannot make run folder" in line and expected in line
    assert list(parent.iterdir()) == []


# --- issue 15.12: --help answers without torch --------------------------------------------------


def test_run_help_imports_neither_torch_nor_the_cce_package():
    code = ("import runpy, sys\nsys.argv = ['experiments/run.py', '--help']\n"
            "try:\n    runpy.run_path('experiments/run.py', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'cut_cross_entropy', 'triton') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--resume" in done.stdout and done.stdout.splitlines()[-1] == "[]"


# --- load_run: checkpoints carry the model's settings -------------------------------------------

FAST = dict(model_fn=functools.partial(SASRec, dim=32, n_blocks=1, dropout=0.1), batch_size=64,
            max_len=20, device="cpu", show_progress=False)


def _tiny_data(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny200"
    if not folder.exists():
        write_synthetic(folder, preset="tiny", n_users=200)
    return folder


def test_load_run_rebuilds_the_best_model_without_gin(tmp_path):
    folder = _tiny_data(tmp_path)
    data = load_sequences(folder)
    metrics = train_flat(data=data, out_dir=tmp_path / "run", data_path=folder, epochs=2, **FAST)
    best = checkpoint.load_torch(tmp_path / "run" / "best.pt")
    assert best["model_settings"] == {
        "class": "core.model.SASRec",
        "kwargs": {"n_items": data.n_items, "dim": 32, "max_len": 20, "n_blocks": 1, "n_heads": 1,
                   "dropout": 0.1}}
    assert checkpoint.load_torch(tmp_path / "run" / "checkpoint.pt")["model_settings"] == best["model_settings"]

    loaded = load_run(tmp_path / "run", device="cpu")
    assert not loaded.model.training and loaded.metrics == metrics
    assert (loaded.data.n_users, loaded.data.n_items) == (data.n_users, data.n_items)
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], best["model"][k]) for k in best["model"])
    # The rebuilt model gives the run's own test metrics.
    seqs = DeviceSequences.from_data(loaded.data, "cpu")
    test = evaluate_model(loaded.model, loaded.model, seqs, split="test", amp=False,
                          batch_size=default_eval_batch_size(data.n_items),
                          max_len=20, mask_history=True, ks=(10,),
                          item_user_counts=data.train_item_user_counts(),
                          n_train_users=count_train_users(data))
    assert test == metrics["test"]
    assert metrics["loss"] == "ce" and metrics["loss_settings"] == {}
    assert metrics["dataset"]["path"] == str(folder)


# --- issue 23: corrupted checkpoints, finished runs, idle resumes, a full disk, SIGTERM ---------


def _tensor_offset(path: Path) -> int:
    """An offset inside the item table's raw bytes in a checkpoint file (sealed or not)."""
    try:
        state = checkpoint.load_torch(path)
    except Exception:  # noqa: BLE001  a checkpoint from before the digest
        state = torch.load(path, weights_only=False)
    needle = state["model"]["item_emb.weight"][1:].numpy().tobytes()[:64]
    offset = path.read_bytes().find(needle)
    assert offset > 0
    return offset + 17


def _corrupt(path: Path, how: str) -> None:
    blob = bytearray(path.read_bytes())
    if how == "flipped byte in tensor data":
        blob[_tensor_offset(path)] ^= 0x10
    elif how == "truncated":
        blob = blob[: len(blob) // 2]
    elif how == "garbage":
        blob = bytearray(os.urandom(len(blob)))
    else:  # "no digest": a bare torch.save, as checkpoints were written before the digest
        torch.save(checkpoint.load_torch(path), path)
        return
    path.write_bytes(bytes(blob))


CORRUPTIONS = ["flipped byte in tensor data", "truncated", "garbage", "no digest"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_corrupted_checkpoint_is_refused_on_resume_with_one_line(finished, tmp_path, capsys, how):
    """Issue 23.5: a flipped byte resumed silently (loss 63.77 instead of 6.18, rc 0); a truncated
    or garbage checkpoint.pt was a 48-line traceback."""
    out = _copy(finished, tmp_path / "run")
    _corrupt(out / "checkpoint.pt", how)
    before = _files(out)
    assert run.main(["--resume", "--out", str(out), "--gin_bindings", "train.epochs = 2"]) == 1
    line = _error_line(capsys)
    assert f"error: {out / 'checkpoint.pt'}: " in line and "--resume cannot continue this run" in line
    assert ("without an integrity digest" in line) == (how == "no digest")
    assert _files(out) == before


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_corrupted_best_pt_is_refused_by_resume_load_run_and_recommend(finished, tmp_path, capsys, how):
    """Issue 23.5: a truncated best.pt was a traceback in recommend.py."""
    from core.training import CorruptCheckpoint
    from experiments import recommend

    out = _copy(finished, tmp_path / "run")
    _corrupt(out / "best.pt", how)
    before = _files(out)
    assert run.main(["--resume", "--out", str(out), "--gin_bindings", "train.epochs = 2"]) == 1
    assert f"{out / 'best.pt'}: " in _error_line(capsys)
    assert _files(out) == before  # refused before training, not after the epochs
    with pytest.raises(CorruptCheckpoint, match="best.pt: .*train the run again"):
        load_run(out, device="cpu")
    assert recommend.main(["--run", str(out), "--all", "--out", str(tmp_path / "recs.csv")]) == 2
    assert f"error: {out / 'best.pt'}: " in _error_line(capsys)
    assert not (tmp_path / "recs.csv").exists()


def test_a_finished_run_without_its_checkpoint_is_not_overwritten(finished, tiny, tmp_path, capsys):
    """Issue 23.2: with checkpoint.pt gone, a new run overwrote best.pt, metrics.json, history."""
    out = _copy(finished, tmp_path / "run")
    (out / "checkpoint.pt").unlink()
    before = _files(out)
    assert run.main(["--gin", "gin/quickstart.gin", "--out", str(out), *tiny,
                     "--gin_bindings", "train.lr = 0.005"]) == 2
    line = _error_line(capsys)
    assert "already holds a run (metrics.json, best.pt, history.jsonl)" in line and "another --out" in line
    assert _files(out) == before


@pytest.mark.parametrize("bindings, why", [
    (["train.epochs = 1"], "checkpoint.pt holds epoch 1 and train.epochs = 1"),  # recorded epochs = 1
    (["train.epochs = 1", "train.patience = 20"], "raise train.epochs"),  # recorded patience = 20
])
def test_a_resume_that_trains_no_epoch_changes_nothing_and_says_so(finished, tmp_path, capsys, bindings, why):
    """Issue 23.3: such a resume rewrote config.gin with settings that never applied."""
    out = _copy(finished, tmp_path / "run")
    before = _files(out)
    assert run.main(["--resume", "--out", str(out), *(a for b in bindings for a in ("--gin_bindings", b))]) == 2
    line = _error_line(capsys)
    assert "--resume: nothing to train: " in line and why in line and f"{out} is unchanged" in line
    assert _files(out) == before


def _ending_line(capsys) -> str:
    """The one ``error:`` line that ends a run that began training (its log lines echo before)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert not any(line.startswith("Traceback") for line in lines), lines
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], lines
    return lines[-1]


def _fail_at(monkeypatch, name: str, nth: int, action) -> None:
    """``action()`` at the ``nth`` atomic write of a file called ``name`` (inside the real
    ``atomic_file``, so its clean-up runs as for a real failure)."""
    import contextlib

    real, calls = checkpoint.atomic_file, []

    @contextlib.contextmanager
    def failing(path):
        with real(path) as f:
            if Path(path).name == name:
                calls.append(path)
                if len(calls) == nth:
                    action()
            yield f
    monkeypatch.setattr(checkpoint, "atomic_file", failing)  # checkpoints
    monkeypatch.setattr(atomic, "atomic_file", failing)  # history.jsonl, metrics.json, config.gin


@pytest.mark.parametrize("name, nth, kept", [("checkpoint.pt", 2, 1), ("history.jsonl", 2, 2), ("metrics.json", 1, 3)])
def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_run_resumes(tiny, tmp_path, capsys, monkeypatch,
                                                                     name, nth, kept):
    """Issue 23.8: ENOSPC while writing checkpoint.pt was a traceback (the folder stayed whole)."""
    out = tmp_path / "run"

    def full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    _fail_at(monkeypatch, name, nth, full)
    assert run.main(["--gin", "gin/quickstart.gin", "--out", str(out), *tiny,
                     "--gin_bindings", "train.epochs = 3"]) == 1
    line = _ending_line(capsys)
    assert line == (f"error: cannot write {out / name}: {os.strerror(errno.ENOSPC)}; "
                    f"{out / 'checkpoint.pt'} holds epoch {kept} whole: --resume continues the run")
    assert "run ended: WriteFailed: cannot write" in (out / "log.txt").read_text()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # no half-written temporary
    assert checkpoint.load_torch(out / "checkpoint.pt")["epoch"] == kept
    monkeypatch.undo()
    assert run.main(["--resume", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3
    assert len((out / "history.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_sigterm_is_recorded_in_log_txt_and_the_run_resumes(tiny, tmp_path, capsys, monkeypatch, signame):
    """Issue 23.8: SIGTERM ended a run with no line in log.txt saying why. Ctrl-C (SIGINT) ended
    it with a KeyboardInterrupt traceback (the attack suite's case 15.sigint2): both are one line."""
    import signal

    signum = getattr(signal, signame)

    def unhandled(*_):  # what the test sees if run.py installs no handler (instead of dying)
        raise RuntimeError(f"{signame} reached the test's own handler")
    previous = signal.signal(signum, unhandled)
    try:
        out = tmp_path / "run"
        # the signal arrives while epoch 2's checkpoint is being written: the write is abandoned
        _fail_at(monkeypatch, "checkpoint.pt", 2, lambda: os.kill(os.getpid(), signum))
        assert run.main(["--gin", "gin/quickstart.gin", "--out", str(out), *tiny,
                         "--gin_bindings", "train.epochs = 2"]) == 128 + signum
        kept = f"{out / 'checkpoint.pt'} holds epoch 1 whole: --resume continues the run"
        assert _ending_line(capsys) == f"error: stopped by {signame} in epoch 2; {kept}"
        assert (out / "log.txt").read_text().splitlines()[-1].endswith(
            f"run ended: RunStopped: stopped by {signame} in epoch 2; {kept}")
        assert signal.getsignal(signum) is unhandled  # run.py put the old handler back
    finally:
        signal.signal(signum, previous)
    monkeypatch.undo()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert run.main(["--resume", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_a_real_sigterm_mid_run_is_one_line_a_log_line_and_a_resumable_folder(tiny, tmp_path):
    """Issue 23.8, as a user's ``kill`` (or a scheduler's) does it: a process, a real signal."""
    import signal
    import time

    out = tmp_path / "run"
    long = ["--gin_bindings", "train.epochs = 500", "--gin_bindings", "train.patience = 500"]
    proc = subprocess.Popen([sys.executable, "experiments/run.py", "--gin", "gin/quickstart.gin", *tiny, *long,
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 300  # a bound on a hang only: any speed gets there
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM in epoch ") and "--resume continues the run" in last
    assert "run ended: RunStopped: stopped by SIGTERM in epoch " in (out / "log.txt").read_text().splitlines()[-1]
    done = checkpoint.load_torch(out / "checkpoint.pt")["epoch"]
    assert run.main(["--resume", "--out", str(out), "--gin_bindings", f"train.epochs = {done + 1}"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == done + 1


def test_a_resume_that_only_runs_the_missing_test_keeps_config_gin(finished, tmp_path, capsys):
    """Issue 23.3: a run killed between its last checkpoint and its test resumes to write
    metrics.json, but config.gin keeps what trained (not the resume's patience = 20)."""
    out = _copy(finished, tmp_path / "run")
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").unlink()
    config = (out / "config.gin").read_bytes()
    assert run.main(["--resume", "--out", str(out), "--gin_bindings", "train.epochs = 1",
                     "--gin_bindings", "train.patience = 20"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["epochs"] == 1 and again["test"] == metrics["test"]
    assert (out / "config.gin").read_bytes() == config


def test_a_log_line_that_a_full_disk_refuses_is_lost_quietly(tmp_path, capsys):
    """Issue 23.8: on a full disk log.txt fails too; logging printed its own traceback then."""
    import logging

    from core.training.run_folder import _LogFile

    handler = _LogFile(tmp_path / "log.txt")

    def full(_text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    handler.stream.write = full
    handler.handle(logging.makeLogRecord({"msg": "epoch 2: ...", "levelno": logging.INFO}))
    handler.close()
    assert "Traceback" not in capsys.readouterr().err
