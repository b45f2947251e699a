"""The adversarial suite of issues 15 and 23, rerunnable: every case as a user would hit it.

    OMP_NUM_THREADS=1 python tools/attack.py --out /tmp/attack        # everything (10-25 min on 2 busy cores)
    python tools/attack.py --list                                     # the cases, nothing run
    python tools/attack.py --only 23.5 --only "15 gin values" --out /tmp/a

Issue 23's reviewer attacked the project in 98 hand cases; the list itself was not kept. This
command rebuilds them from the two issues' text (issue 23's 15 defects with every sub-case it
names, issue 15's categories as results/README.md's issue-15 table names them) and runs each one
as a subprocess, the way a user meets it, with a hard timeout (a hang is a timeout, never a
wait). Everything happens in a scratch folder under the temporary folder, removed at the end
(``--keep`` keeps it): tiny inputs are generated on the fly (a 300-user CSV, the synthetic
'tiny' preset with 150 users), the repository is only read.

Each case names what a trustworthy tool does (``expect``):
- ``error``: exit != 0 and exactly one ``error:`` line on stderr (the run's own log lines,
  echoed to stderr as ``YYYY-MM-DD hh:mm:ss LEVEL logger: ...``, are allowed beside it);
- ``ok``: exit 0 and the case's own check holds (equal results, the files it should write);
- ``warning``: exit 0 and the warning the project decided on is said (once);
- ``clean``: either of the two (a refusal in one line, or an accepted input that provably
  changes nothing: the fuzz cases compare what is read back with the original).
Its verdict, in this order: ``hang`` (no exit within the timeout), ``traceback`` (Python's
"Traceback (most recent call last)", a fatal error, or a crash exit such as 139 / -11),
``silent change`` (the case's check found a file or a result changed that should not have:
digests of the folder before and after, metrics.json, config.gin, recs.csv written), then
``unexpected`` (anything else not as expected), else ``ok``. Cases that run several commands
(the fuzz) take the worst verdict of their commands. ``.lock`` (pid of the last writer) is
left out of folder digests.

Read-only mounts and a full disk are real, not faked: ``unshare -rm`` (a user and mount
namespace) mounts a read-only bind or a 64 KiB tmpfs for the one command (as root a chmod
does not stop writes). Where that is impossible the case is ``skipped`` with the reason.

Output: the table (id, group, case, expected, verdict, first stderr line) on stdout last, and
``attack.csv`` + ``attack.md`` in ``--out`` (written atomically, ``core.atomic``); the summary
line "N cases: ok A, traceback B, hang C, silent change D, unexpected E"; exit 1 if any case is
not ok (skipped cases do not fail the suite).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import hashlib
import io
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.atomic import unwritable, write_text  # cheap: no torch, no h5py
from core.paths import REPO_ROOT

ROOT = REPO_ROOT
SHARED = ROOT.parent / "shared" / "data"
PY = sys.executable
TRACEBACK = "Traceback (most recent call last)"
CRASH_RCS = {139, -11, 134, -6, 135, -7, 136, -8, 132, -4}  # segfault, abort, bus error, FPE, illegal insn
CRASH_TEXT = ("Segmentation fault", "Fatal Python error", "core dumped")
LOG_ECHO = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) \S+: "  # the run's log.txt lines on stderr
ARGPARSE_ERROR = r"^[\w.-]+\.py: error: "  # argparse: usage lines, then "prog.py: error: ..." (exit 2)
VERDICTS = ("ok", "traceback", "hang", "silent change", "unexpected")
SEVERITY = {"hang": 5, "traceback": 4, "silent change": 3, "unexpected": 2, "skipped": 1, "ok": 0}
EXPECTS = {
    "error": "one error: line, exit != 0",
    "ok": "accepted, results as they should be",
    "warning": "accepted with one warning",
    "clean": "one error: line, or accepted and provably unchanged",
}


# --- outcomes and their verdicts (pure: tests/test_attack_tool.py checks them) -------------------


@dataclass
class Outcome:
    """One command's end: exit status (None when killed for running past the timeout)."""

    command: str
    rc: int | None
    stderr: str = ""
    stdout: str = ""
    timed_out: bool = False
    seconds: float = 0.0


@dataclass
class Check:
    """What a case judges: the command's outcome, what a trustworthy tool does (``expect``), and
    what the case's own check found: ``change`` (a silent change: a file or result changed that
    must not have) or ``problem`` (something else not as it should be)."""

    outcome: Outcome
    expect: str
    change: str | None = None
    problem: str | None = None
    note: str = ""
    tolerate: tuple[str, ...] = (LOG_ECHO,)
    skipped: str | None = None


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def classify(check: Check) -> tuple[str, str]:
    """(verdict, why) for one command: hang > traceback > silent change > unexpected > ok."""
    if check.skipped:
        return "skipped", check.skipped
    out = check.outcome
    if out.timed_out:
        return "hang", f"no exit within {out.seconds:.0f} s (killed)"
    text = out.stderr + out.stdout
    if TRACEBACK in text or (out.rc in CRASH_RCS) or any(t in text for t in CRASH_TEXT):
        return "traceback", f"exit {out.rc}, " + ("a Python traceback" if TRACEBACK in text else "a crash")
    if check.change:
        return "silent change", check.change
    lines = stderr_lines(out.stderr)
    if out.rc == 2 and lines and re.match(ARGPARSE_ERROR, lines[-1]):  # argparse's usage block + its error line
        lines = [lines[-1].split(": ", 1)[1]]
    errors = [line for line in lines if line.startswith("error: ")]
    others = [line for line in lines if not line.startswith("error: ")
              and not any(re.search(p, line) for p in check.tolerate)]
    refused = out.rc not in (0, None)
    one_line = len(errors) == 1 and not others
    if check.expect == "error":
        if not refused:
            return "unexpected", "exit 0 where a refusal was expected"
        if not one_line:
            return "unexpected", f"exit {out.rc} with {len(errors)} error: line(s) and {len(others)} other stderr line(s)"
    elif check.expect in ("ok", "warning"):
        if refused:
            return "unexpected", f"exit {out.rc} where it should be accepted"
        if errors:
            return "unexpected", "exit 0 but an error: line was printed"
    elif check.expect == "clean":
        if refused and not one_line:
            return "unexpected", f"exit {out.rc} with {len(errors)} error: line(s) and {len(others)} other stderr line(s)"
    else:
        raise ValueError(f"unknown expectation {check.expect!r}")
    if check.problem:
        return "unexpected", check.problem
    return "ok", ""


def worst(checks: list[Check]) -> tuple[str, str, Check]:
    """The worst verdict of a case's commands, its reason and the command it came from."""
    judged = [(classify(c), c) for c in checks]
    (verdict, why), check = max(judged, key=lambda j: SEVERITY[j[0][0]])
    if len(checks) > 1:
        counts = {}
        for (v, _), _c in judged:
            counts[v] = counts.get(v, 0) + 1
        why = f"{len(checks)} commands: " + ", ".join(f"{v} {n}" for v, n in counts.items()) + (f"; {why}" if why else "")
    return verdict, why, check


# --- files: digests before and after ---------------------------------------------------------------


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_digest(path: Path, ignore: tuple[str, ...] = (".lock",)) -> dict[str, str]:
    """rel path -> SHA-256 (or 'dir') of everything under ``path`` (a file: its own digest)."""
    path = Path(path)
    if path.is_file():
        return {"": sha(path)}
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): ("dir" if p.is_dir() else sha(p))
            for p in sorted(path.rglob("*")) if p.name not in ignore}


def tree_change(before: dict, after: dict) -> str | None:
    """None when equal, else a short description of what changed."""
    if before == after:
        return None
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
    parts = [f"{name}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}"
             for name, v in (("changed", changed), ("added", added), ("removed", removed)) if v]
    return "; ".join(parts)


# --- the scratch world ------------------------------------------------------------------------------


class SetupError(Exception):
    """A case's preparation failed: the case is 'unexpected', with this reason."""


class Skip(Exception):
    """The case cannot be simulated here (the reason is shown)."""


DRIVER = r'''
"""tools/attack.py's driver for API cases: the project's documented exceptions become one
'error:' line (exit 1); anything else propagates as a traceback."""
import hashlib, json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from core.data.shards import DataFormatError
from core.integrity import CorruptFile
KNOWN = [DataFormatError, CorruptFile]
if sys.argv[2] != "load":  # these import torch: the fuzz loads stay light
    from core.recommendations import RecommendError
    from core.training.errors import TrainingError
    from core.dataset_config import DataMissingError
    KNOWN += [RecommendError, TrainingError, DataMissingError]

def content(d):
    h = hashlib.sha256()
    for a in (d.offsets, d.items, d.user_ids, d.item_ids):
        a = np.asarray(a)
        h.update(str(a.dtype).encode()); h.update(np.ascontiguousarray(a).tobytes() if a.dtype != object else json.dumps(a.tolist()).encode())
    h.update(json.dumps(d.attrs, sort_keys=True, default=str).encode())
    h.update(f"{d.n_users} {d.n_items}".encode())
    return h.hexdigest()

def main(what, *args):
    if what == "load":
        from core.data.shards import load_sequences
        print("content", content(load_sequences(args[0])))
        return
    import core
    if what == "load_run":
        run = core.load_run(args[0], device="cpu")
        print("loaded", type(run).__name__)
    elif what == "recommend_str":
        run = core.load_run(args[0], device="cpu")
        recs = core.recommend(run, users=args[1], k=5)
        print("recommended", len(recs))
    elif what == "seqdata_oob":
        from core.data.shards import SequenceData
        rng = np.random.default_rng(0)
        lengths = np.full(60, 8)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = rng.integers(1, 501, offsets[-1]).astype(np.int32)
        items[17] = 998
        data = SequenceData(offsets=offsets, items=items, n_users=60, n_items=500)
        core.train(data, args[0], loss_fn=core.ce, optim=core.Optim(batch_size=16), schedule=core.Schedule(epochs=1))
        print("trained")
    else:
        raise SystemExit(f"unknown driver case {what}")

try:
    main(*sys.argv[2:])
except tuple(KNOWN) as err:
    print(f"error: {type(err).__name__}: {str(err).strip().splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
'''


class Ctx:
    """The scratch folder, the subprocess runner and the fixtures shared by cases (built once)."""

    def __init__(self, scratch: Path, timeout_s: float):
        self.scratch = scratch
        self.timeout_s = timeout_s
        self.cache = scratch / "cache"
        self.tmp = scratch / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.driver = scratch / "driver.py"
        self.driver.write_text(DRIVER)
        self.env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
                        TMPDIR=str(self.tmp), PYTHONUNBUFFERED="1")
        self.env.pop("CUDA_VISIBLE_DEVICES", None)
        self._memo: dict = {}
        self.dir = scratch / "cases" / "none"

    # -- running ---------------------------------------------------------------------------------------

    def show(self, cmd: list[str]) -> str:
        text = shlex.join(str(c) for c in cmd)
        return self.portable(text.replace(PY, "python"))

    def portable(self, text: str) -> str:
        """``text`` with this machine's paths as placeholders: the scratch folder ``$S``, the
        repository ``$REPO`` (results name no absolute path of the machine they ran on)."""
        return text.replace(str(self.scratch), "$S").replace(str(ROOT), "$REPO")

    def run(self, cmd: list, *, cwd: Path = ROOT, timeout: float | None = None, env: dict | None = None) -> Outcome:
        cmd = [str(c) for c in cmd]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        proc.shown, proc.started = self.show(cmd), start
        return self.finish(proc, timeout)

    def start(self, cmd: list) -> subprocess.Popen:
        cmd = [str(c) for c in cmd]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        proc.shown = self.show(cmd)
        proc.started = time.monotonic()
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float | None = None) -> Outcome:
        try:
            out, err = proc.communicate(timeout=timeout or self.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            timed_out = True
        except BaseException:  # the suite itself stopped (Ctrl-C, SIGTERM): leave no child behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        return Outcome(proc.shown, None if timed_out else proc.returncode, err.decode(errors="replace"),
                       out.decode(errors="replace"), timed_out, time.monotonic() - proc.started)

    def wait_for(self, proc: subprocess.Popen, test: Callable[[], bool], what: str, limit: float | None = None) -> None:
        """Polls ``test`` every 20 ms while ``proc`` lives: an event, not a fixed sleep."""
        end = time.monotonic() + (limit or self.timeout_s)
        while time.monotonic() < end:
            if test():
                return
            if proc.poll() is not None:
                raise SetupError(f"setup: the process ended (exit {proc.returncode}) before {what}")
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise SetupError(f"setup: {what} did not happen within {limit or self.timeout_s:.0f} s")

    def namespaced(self, script: str) -> list[str]:
        """A shell script in its own user + mount namespace (real read-only binds and small tmpfs)."""
        if "unshare_ok" not in self._memo:
            probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {self.tmp}"],
                                   capture_output=True, check=False)
            self._memo["unshare_ok"] = probe.returncode == 0
        if not self._memo["unshare_ok"]:
            raise Skip("cannot mount here (no unshare or no user namespaces): not simulated")
        return ["unshare", "-rm", "sh", "-c", script]

    def read_only(self, folder: Path, cmd: list, cwd: Path | None = None) -> list[str]:
        """``cmd`` run while ``folder`` is a read-only bind mount of itself."""
        folder.mkdir(parents=True, exist_ok=True)
        inner = shlex.join(str(c) for c in cmd)
        go = f"cd {shlex.quote(str(cwd))} && " if cwd else ""
        return self.namespaced(f"mount --bind {shlex.quote(str(folder))} {shlex.quote(str(folder))} && "
                               f"mount -o remount,bind,ro {shlex.quote(str(folder))} && {go}exec {inner}")

    # -- commands ----------------------------------------------------------------------------------------

    def bindings(self, *extra: str, users: int | None = 150) -> list[str]:
        b = [f"dataset.cache_dir = '{self.cache}'", "train.batch_size = 64", "train.device = 'cpu'",
             "train.show_progress = False"]
        if users is not None:
            b.append(f"dataset.synthetic_overrides = {{'n_users': {users}}}")
        return [a for s in (*b, *extra) for a in ("--gin_bindings", s)]

    def train(self, out: Path, *extra: str, gin: tuple[str, ...] = ("gin/quickstart.gin",), users: int | None = 150) -> list:
        return [PY, "experiments/run.py", *(a for g in gin for a in ("--gin", g)), "--out", out,
                *self.bindings(*extra, users=users)]

    def resume(self, out: Path, *bindings: str) -> list:
        return [PY, "experiments/run.py", "--resume", "--out", out, *(a for b in bindings for a in ("--gin_bindings", b))]

    def on_path(self, data: Path, out: Path, *extra: str) -> list:
        """A tiny run on a prepared folder (``dataset.path``)."""
        return self.train(out, "dataset.synthetic_preset = None", f"dataset.path = '{data}'",
                          "dataset.name = 'mine'", *extra, users=None)

    def prepare(self, raw: Path, out: Path, *extra: str, fmt: str = "generic") -> list:
        return [PY, "tools/prepare_data.py", "--format", fmt, "--raw", raw, "--out", out, "--quiet", *extra]

    def recommend(self, run: Path, out: Path, *extra: str) -> list:
        return [PY, "experiments/recommend.py", "--run", run, "--all", "--k", "5", "--out", out, "--device", "cpu", *extra]

    def api(self, *args) -> list:
        return [PY, self.driver, ROOT, *args]

    # -- fixtures ----------------------------------------------------------------------------------------

    def fixture_run(self, name: str, *extra: str, gin: tuple[str, ...] = ("gin/quickstart.gin",)) -> Path:
        key = ("run", name)
        if key not in self._memo:
            out = self.scratch / "fixtures" / name
            done = self.run(self.train(out, *extra, gin=gin))
            if done.rc != 0:
                raise SetupError(f"setup: fixture run {name} failed (exit {done.rc}): {last_line(done.stderr)}")
            self._memo[key] = out
        return self._memo[key]

    def copy_run(self, name: str, *extra: str, gin: tuple[str, ...] = ("gin/quickstart.gin",), to: str = "run") -> Path:
        src = self.fixture_run(name, *extra, gin=gin)
        dst = self.dir / to
        shutil.copytree(src, dst)
        return dst

    def finished3(self) -> Path:
        return self.fixture_run("finished3", "train.epochs = 3")

    def long_ref(self) -> Path:
        """An uninterrupted LONG run: what a killed-then-resumed one must reproduce exactly."""
        return self.fixture_run("long_ref", *LONG)

    def csv(self, name: str, users: int = 300, *, seed: int = 0, extra_users: int = 0, fmt: str = "generic") -> Path:
        path = self.dir / name if self.dir else self.scratch / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(csv_log(users, seed=seed, extra_users=extra_users, fmt=fmt))
        return path

    def prepared(self) -> Path:
        """The 300-user CSV prepared once (read-only for cases: copy it before changing it)."""
        if "prepared" not in self._memo:
            raw = self.scratch / "fixtures" / "log300.csv"
            raw.parent.mkdir(parents=True, exist_ok=True)
            raw.write_text(csv_log(300))
            out = self.scratch / "fixtures" / "data300"
            done = self.run(self.prepare(raw, out))
            if done.rc != 0:
                raise SetupError(f"setup: preparing the 300-user CSV failed: {last_line(done.stderr)}")
            self._memo["prepared"] = out
        return self._memo["prepared"]

    def copy_data(self) -> Path:
        dst = self.dir / "data"
        shutil.copytree(self.prepared(), dst)
        return dst

    def content(self, data: Path) -> str:
        key = ("content", str(data))
        if key not in self._memo:
            done = self.run(self.api("load", data))
            if done.rc != 0:
                raise SetupError(f"setup: the clean data does not load: {last_line(done.stderr)}")
            self._memo[key] = done.stdout.split()[-1]
        return self._memo[key]


LONG = ("train.epochs = 40", "train.patience = 500")  # ~0.1 s an epoch: seconds of training to signal into


def last_line(text: str) -> str:
    lines = stderr_lines(text)
    return lines[-1] if lines else ""


def csv_log(users: int, *, seed: int = 0, extra_users: int = 0, fmt: str = "generic", items: int = 100) -> str:
    """A small interaction log: every user 5-14 distinct items among ``items``, increasing times."""
    rng = random.Random(seed)
    head = {"generic": "user_id,item_id,timestamp", "ml20m": "userId,movieId,rating,timestamp"}[fmt]
    rows = [head]
    t = 1_000_000_000
    for u in range(1, users + extra_users + 1):
        for i in rng.sample(range(1, items + 1), rng.randint(5, 14)):
            t += rng.randint(1, 100)
            rows.append(f"{u},{i},{t}" if fmt == "generic" else f"{u},{i},4.0,{t}")
    return "\n".join(rows) + "\n"


def metrics_equal(a: Path, b: Path) -> str | None:
    """None when two runs' results are bit-identical (test/valid metrics, epochs, losses)."""
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    for key in ("test", "valid", "epochs", "best_epoch"):
        if ma.get(key) != mb.get(key):
            return f"metrics.json {key} differs from the uninterrupted run's: {ma.get(key)} vs {mb.get(key)}"
    la = [json.loads(line)["train_loss"] for line in (a / "history.jsonl").read_text().splitlines()]
    lb = [json.loads(line)["train_loss"] for line in (b / "history.jsonl").read_text().splitlines()]
    if la != lb:
        return "history.jsonl train losses differ from the uninterrupted run's"
    return None


def flip(path: Path, offset: int, mask: int = 1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


# --- the cases --------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    group: str
    name: str
    expect: str
    fn: Callable[[Ctx], Check | list[Check]] = field(repr=False)


CASES: list[Case] = []


def case(id: str, group: str, name: str, expect: str):
    def register(fn):
        CASES.append(Case(id, group, name, expect, fn))
        return fn
    return register


def unchanged(ctx: Ctx, folder: Path, cmd: list, expect: str = "error", **kw) -> Check:
    """Runs ``cmd``; any change under ``folder`` is a silent change."""
    before = tree_digest(folder)
    out = ctx.run(cmd, **kw)
    return Check(out, expect, change=tree_change(before, tree_digest(folder)))


def no_folder(ctx: Ctx, out: Path, cmd: list) -> Check:
    done = ctx.run(cmd)
    return Check(done, "error", change=f"{out.name} was created" if out.exists() else None)


# 23.1: corrupted metadata, the fuzz --------------------------------------------------------------------

@case("23.01a", "23.1", "item_ids.h5: bit flipped at byte 8074 (attributes), run.py on dataset.path", "error")
def _(ctx):
    data = ctx.copy_data()
    target = data / "item_ids.h5"
    flip(target, min(8074, target.stat().st_size - 1))
    out = ctx.dir / "run"
    return no_folder(ctx, out, ctx.on_path(data, out, "train.epochs = 1"))


@case("23.01b", "23.1", "item_ids.h5: bit flipped at byte 8074, core.load_sequences", "error")
def _(ctx):
    data = ctx.copy_data()
    target = data / "item_ids.h5"
    flip(target, min(8074, target.stat().st_size - 1))
    return Check(ctx.run(ctx.api("load", data)), "error")


def fuzz(ctx: Ctx, name: str, part: int, parts: int = 4, n: int = 40) -> list[Check]:
    """``n`` sampled bit flips of ``name`` (half in the first 16 KiB, where HDF5 keeps its
    superblock, object headers and attributes), split in ``parts`` sub-cases by offset. Each flip
    is loaded in a fresh process: refused in one line, or read back equal to the original."""
    data = ctx.copy_data()
    target = data / name
    size = target.stat().st_size
    rng = random.Random(f"{name}-fuzz")
    head = min(size, 16384)
    offsets = sorted({*(rng.randrange(head) for _ in range(n // 2)), *(rng.randrange(size) for _ in range(n - n // 2))})
    if name == "item_ids.h5" and 8074 < size:
        offsets = sorted({8074, *offsets[1:]})
    chunk = offsets[part::parts]
    reference = ctx.content(ctx.prepared())
    original = target.read_bytes()
    checks = []
    for off in chunk:
        mask = 1 << rng.randrange(8)
        flip(target, off, mask)
        try:
            done = ctx.run(ctx.api("load", data), timeout=min(ctx.timeout_s, 60))
        finally:
            target.write_bytes(original)
        done.command += f"   # {name} byte {off} ^ 0x{mask:02x}"
        change = None
        if done.rc == 0 and done.stdout.split()[-1:] != [reference]:
            change = f"byte {off} ^ 0x{mask:02x} loaded without error and reads back different data"
        checks.append(Check(done, "clean", change=change))
    return checks


for _part in range(4):
    case(f"23.01c{_part + 1}", "23.1", f"shard_00000.h5: sampled bit-flip fuzz, 10 of 40 offsets (part {_part + 1}/4)", "clean")(
        lambda ctx, p=_part: fuzz(ctx, "shard_00000.h5", p))
for _part in range(4):
    case(f"23.01d{_part + 1}", "23.1", f"item_ids.h5: sampled bit-flip fuzz, 10 of 40 offsets (part {_part + 1}/4)", "clean")(
        lambda ctx, p=_part: fuzz(ctx, "item_ids.h5", p))


H5_EDIT = r'''
import sys, h5py, numpy as np
what, path = sys.argv[1], sys.argv[2]
with h5py.File(path, "r+") as f:
    if what == "attr":
        name = "filters" if "filters" in f.attrs else sorted(f.attrs)[0]
        value = f.attrs[name]
        f.attrs[name] = (value.replace("user", "mhn_user") if isinstance(value, str) else value + 1)
        print("changed attribute", name)
    else:
        name = next(k for k in f.keys() if isinstance(f[k], h5py.Dataset))
        data = f[name][...]
        del f[name]
        f.create_dataset(name, data=data[::-1].copy())
        print("replaced dataset", name)
'''


def h5_edit(ctx: Ctx, what: str, path: Path) -> None:
    script = ctx.scratch / "h5_edit.py"
    script.write_text(H5_EDIT)
    done = ctx.run([PY, script, what, path])
    if done.rc != 0:
        raise SetupError(f"setup: editing {path.name} failed: {last_line(done.stderr)}")


@case("23.01e", "23.1", "shard attribute ('filters') changed in place with h5py", "error")
def _(ctx):
    data = ctx.copy_data()
    h5_edit(ctx, "attr", data / "shard_00000.h5")
    return Check(ctx.run(ctx.api("load", data)), "error")


@case("23.01f", "23.1", "item id map replaced (item_ids.h5 dataset rewritten reversed)", "error")
def _(ctx):
    data = ctx.copy_data()
    h5_edit(ctx, "map", data / "item_ids.h5")
    return Check(ctx.run(ctx.api("load", data)), "error")


@case("23.01g", "23.1", "stats.json: one byte flipped", "error")
def _(ctx):
    data = ctx.copy_data()
    flip(data / "stats.json", 10, 0x04)
    return Check(ctx.run(ctx.api("load", data)), "error")


@case("23.01h", "23.1", "manifest.sealed: one byte flipped", "error")
def _(ctx):
    data = ctx.copy_data()
    target = data / "manifest.sealed"
    flip(target, target.stat().st_size // 2, 0x10)
    return Check(ctx.run(ctx.api("load", data)), "error")


@case("23.01i", "23.1", "an extra shard_00001.h5 dropped into the folder", "error")
def _(ctx):
    data = ctx.copy_data()
    shutil.copy(data / "shard_00000.h5", data / "shard_00001.h5")
    return Check(ctx.run(ctx.api("load", data)), "error")


# 23.2: finished runs overwritten ---------------------------------------------------------------------

@case("23.02a", "23.2", "finished run, checkpoint.pt deleted, new run with another config into it", "error")
def _(ctx):
    run = ctx.copy_run("finished3", "train.epochs = 3")
    (run / "checkpoint.pt").unlink()
    return unchanged(ctx, run, ctx.train(run, "train.lr = 0.005", "train.epochs = 1"))


@case("23.02b", "23.2", "same, the new run (lr 0.005, 2,000 users) killed in its epoch 1; report.py then", "error")
def _(ctx):
    run = ctx.copy_run("finished3", "train.epochs = 3")
    (run / "checkpoint.pt").unlink()
    before = tree_digest(run)
    proc = ctx.start(ctx.train(run, "train.lr = 0.005", "train.epochs = 1", users=2000))
    end = time.monotonic() + ctx.timeout_s
    while proc.poll() is None and time.monotonic() < end:  # refused before any write, or killed in epoch 1
        if tree_digest(run) != before:
            time.sleep(1.0)  # it writes into the folder: let it reach its epoch 1, then kill it
            break
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    done = ctx.finish(proc)
    change = tree_change(before, tree_digest(run))
    report = ctx.run([PY, "experiments/report.py", run, "--out", ctx.dir / "report"])
    note = f"report.py: exit {report.rc}"
    return Check(done, "error", change=change, note=note)


# 23.3: a resume that trains nothing ------------------------------------------------------------------

@case("23.03a", "23.3", "--resume of a finished cce_exact run (nothing to train)", "error")
def _(ctx):
    run = ctx.copy_run("cce_exact", "train.epochs = 1", gin=("gin/quickstart.gin", "gin/loss/cce_exact.gin"))
    first = unchanged(ctx, run, ctx.resume(run))
    if first.change or first.outcome.rc == 0:
        return first
    again = ctx.run(ctx.resume(run))  # the next resume must not be refused for a loss it never changed
    if "loss_fn" in again.stderr:
        first.problem = f"the second resume is refused for the loss: {last_line(again.stderr)}"
    return first


@case("23.03b", "23.3", "--resume of a finished cce_exact run with train.epochs = 2 trains on, keeps cce.filter_eps = None", "ok")
def _(ctx):
    run = ctx.copy_run("cce_exact", "train.epochs = 1", gin=("gin/quickstart.gin", "gin/loss/cce_exact.gin"))
    done = ctx.run(ctx.resume(run, "train.epochs = 2"))
    problem = None
    if done.rc == 0:
        config = (run / "config.gin").read_text()
        metrics = json.loads((run / "metrics.json").read_text())
        if "cce.filter_eps = None" not in config:
            problem = "config.gin lost cce.filter_eps = None"
        elif metrics.get("epochs") != 2 or metrics.get("loss") != "cce_exact":
            problem = f"metrics.json says epochs {metrics.get('epochs')}, loss {metrics.get('loss')}"
    return Check(done, "ok", problem=problem)


@case("23.03c", "23.3", "--resume of an early-stopped run with train.patience = 20", "error")
def _(ctx):
    run = ctx.copy_run("early", "train.epochs = 20", "train.patience = 2", "train.lr = 0.0")
    if not json.loads((run / "metrics.json").read_text()).get("early_stopped"):
        raise SetupError("setup: the lr-0 run did not stop early")
    return unchanged(ctx, run, ctx.resume(run, "train.patience = 20"))


@case("23.03d", "23.3", "--resume of a finished 3-epoch run with train.epochs = 1", "error")
def _(ctx):
    run = ctx.copy_run("finished3", "train.epochs = 3")
    return unchanged(ctx, run, ctx.resume(run, "train.epochs = 1"))


@case("23.03e", "23.3", "--resume after a kill between the last checkpoint and the test (metrics.json gone)", "ok")
def _(ctx):
    run = ctx.copy_run("finished3", "train.epochs = 3")
    reference = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    config = (run / "config.gin").read_bytes()
    done = ctx.run(ctx.resume(run))
    change = problem = None
    if (run / "config.gin").read_bytes() != config:
        change = "config.gin rewritten"
    elif done.rc == 0 and json.loads((run / "metrics.json").read_text()).get("test") != reference["test"]:
        problem = "the test metrics differ from the run's own"
    return Check(done, "ok", change=change, problem=problem)


# 23.4: stale data ------------------------------------------------------------------------------------

def generic_bindings(raw: Path, *more: str) -> tuple[str, ...]:
    return ("dataset.synthetic_preset = None", f"dataset.raw = '{raw}'", "dataset.fmt = 'generic'",
            "dataset.name = 'mine'", *more)


@case("23.04a", "23.4", "dataset.path + dataset.raw, the raw file then grown by 60 users", "error")
def _(ctx):
    raw, data = ctx.csv("log.csv"), ctx.dir / "data"
    first = ctx.run(ctx.train(ctx.dir / "r1", *generic_bindings(raw, f"dataset.path = '{data}'"), "train.epochs = 1", users=None))
    if first.rc != 0:
        raise SetupError(f"setup: first run failed: {last_line(first.stderr)}")
    raw.write_text(csv_log(300, extra_users=60))
    before = tree_digest(data)
    out = ctx.dir / "r2"
    done = ctx.run(ctx.train(out, *generic_bindings(raw, f"dataset.path = '{data}'"), "train.epochs = 1", users=None))
    change = tree_change(before, tree_digest(data))
    if done.rc == 0 and not change:
        change = "trained on the old shards (the raw file grew by 60 users)"
    return Check(done, "error", change=change)


@case("23.04b", "23.4", "raw file changed while its cache is in use: the cache is rebuilt", "ok")
def _(ctx):
    raw = ctx.csv("log.csv")
    cache = ctx.dir / "cache"
    extra = (*generic_bindings(raw), f"dataset.cache_dir = '{cache}'", "train.epochs = 1")
    first = ctx.run(ctx.train(ctx.dir / "r1", *extra, users=None))
    if first.rc != 0:
        raise SetupError(f"setup: first run failed: {last_line(first.stderr)}")
    raw.write_text(csv_log(300, extra_users=60))
    done = ctx.run(ctx.train(ctx.dir / "r2", *extra, users=None))
    change = None
    if done.rc == 0:
        users = json.loads((ctx.dir / "r2" / "metrics.json").read_text())["dataset"]
        if "360" not in json.dumps(users):
            change = f"the run did not train on the grown file (dataset: {json.dumps(users)[:120]})"
    return Check(done, "ok", change=change)


@case("23.04c", "23.4", "raw file touched (same bytes, new mtime): accepted", "ok")
def _(ctx):
    raw, data = ctx.csv("log.csv"), ctx.dir / "data"
    extra = (*generic_bindings(raw, f"dataset.path = '{data}'"), "train.epochs = 1")
    first = ctx.run(ctx.train(ctx.dir / "r1", *extra, users=None))
    if first.rc != 0:
        raise SetupError(f"setup: first run failed: {last_line(first.stderr)}")
    os.utime(raw, (time.time() + 5, time.time() + 5))
    return Check(ctx.run(ctx.train(ctx.dir / "r2", *extra, users=None)), "ok")


# 23.5: checkpoints -----------------------------------------------------------------------------------

def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(random.Random(0).randbytes(len(data)))
    elif how == "flipped":  # 4 bytes inside the tensor data (the last third of the file)
        b = bytearray(data)
        for k in range(4):
            b[len(b) * 2 // 3 + 97 * k] ^= 0x40
        path.write_bytes(bytes(b))


for _letter, _how in zip("abc", ("truncated", "garbage", "flipped")):
    @case(f"23.05{_letter}", "23.5",
          f"checkpoint.pt {_how}{' (4 bytes in tensor data)' if _how == 'flipped' else ''}, --resume with train.epochs = 4", "error")
    def _(ctx, how=_how):
        run = ctx.copy_run("finished3", "train.epochs = 3")
        corrupt(run / "checkpoint.pt", how)
        return unchanged(ctx, run, ctx.resume(run, "train.epochs = 4"))


def _recommend_after_corruption(ctx, name: str, how: str):
    """A finished run with ``name`` corrupted (``how``), then recommend.py: (outcome, recs.csv)."""
    run = ctx.copy_run("finished3", "train.epochs = 3")
    corrupt(run / name, how)
    recs = ctx.dir / "recs.csv"
    return ctx.run(ctx.recommend(run, recs)), recs


@case("23.05d", "23.5", "best.pt truncated, recommend.py", "error")
def _(ctx):
    done, recs = _recommend_after_corruption(ctx, "best.pt", "truncated")
    return Check(done, "error", change="recs.csv written" if recs.exists() else None)


@case("23.05e", "23.5", "best.pt truncated, --resume with train.epochs = 4", "error")
def _(ctx):
    run = ctx.copy_run("finished3", "train.epochs = 3")
    corrupt(run / "best.pt", "truncated")
    return unchanged(ctx, run, ctx.resume(run, "train.epochs = 4"))


@case("23.05f", "23.5", "best.pt truncated, core.load_run", "error")
def _(ctx):
    run = ctx.copy_run("finished3", "train.epochs = 3")
    corrupt(run / "best.pt", "truncated")
    return Check(ctx.run(ctx.api("load_run", run)), "error")


@case("23.05g", "23.5", "checkpoint.pt garbage, recommend.py still serves from an intact best.pt", "ok")
def _(ctx):
    done, recs = _recommend_after_corruption(ctx, "checkpoint.pt", "garbage")
    return Check(done, "ok", problem=None if done.rc != 0 or recs.is_file() else "no recs.csv")


# 23.6, 23.8a: a full disk ----------------------------------------------------------------------------

@case("23.06", "23.6", "tools/prepare_data.py onto a full disk (a 64 KiB tmpfs)", "error")
def _(ctx):
    small = ctx.dir / "small"
    small.mkdir(parents=True, exist_ok=True)
    raw = ctx.csv("log.csv", users=3000)
    listing = ctx.dir / "listing.txt"
    prep = shlex.join(str(c) for c in ctx.prepare(raw, small / "data"))
    done = ctx.run(ctx.namespaced(f"mount -t tmpfs -o size=64k tmpfs {small} && {prep}; rc=$?; "
                                  f"ls -A {small} > {listing}; exit $rc"))
    left = listing.read_text().split() if listing.exists() else []
    return Check(done, "error", change=f"left in the full folder: {left}" if left else None)


def full_disk_run(ctx: Ctx) -> tuple[Outcome, Outcome, Path]:
    """A run whose folder is on a 2 MiB tmpfs (epoch 1's checkpoint.pt, ~1.1 MB, and best.pt fit;
    epoch 2's checkpoint, written beside the old one before it replaces it, does not), then
    --resume after the tmpfs grows: one namespace, both commands, their outputs kept apart."""
    if "full_disk" not in ctx._memo:
        base = ctx.scratch / "full_disk"
        small = base / "small"
        small.mkdir(parents=True)
        ctx.fixture_run("finished3", "train.epochs = 3")  # the data cache exists: only the run folder is small
        train = shlex.join(str(c) for c in ctx.train(small / "run", "train.epochs = 3"))
        resume = shlex.join(str(c) for c in ctx.resume(small / "run"))
        script = (f"mount -t tmpfs -o size=2m tmpfs {small} || exit 99; "
                  f"{train} >{base}/out1 2>{base}/err1; echo $? >{base}/rc1; "
                  f"mount -o remount,size=64m tmpfs {small}; "
                  f"{resume} >{base}/out2 2>{base}/err2; echo $? >{base}/rc2; cp -r {small}/run {base}/copy")
        whole = ctx.run(ctx.namespaced(script), timeout=3 * ctx.timeout_s)
        if whole.timed_out:
            ctx._memo["full_disk"] = (whole, whole, base)
        else:
            outs = []
            for k, cmd in ((1, train), (2, resume)):
                rc = (base / f"rc{k}").read_text().strip() if (base / f"rc{k}").exists() else ""
                outs.append(Outcome(ctx.show(shlex.split(cmd)) + "   # run folder on a 2 MiB tmpfs"
                                    + (" (grown to 64 MiB)" if k == 2 else ""),
                                    int(rc) if rc.lstrip("-").isdigit() else None,
                                    (base / f"err{k}").read_text(errors="replace") if (base / f"err{k}").exists() else whole.stderr,
                                    (base / f"out{k}").read_text(errors="replace") if (base / f"out{k}").exists() else ""))
            ctx._memo["full_disk"] = (*outs, base)
    return ctx._memo["full_disk"]


@case("23.08a", "23.8", "full disk while writing a training checkpoint", "error")
def _(ctx):
    first, _, _ = full_disk_run(ctx)
    return Check(first, "error")


@case("23.08b", "23.8", "... then --resume once there is space: the run finishes, bit-identical", "ok")
def _(ctx):
    _, second, base = full_disk_run(ctx)
    problem = change = None
    if second.rc == 0 and not (base / "copy" / "metrics.json").is_file():
        problem = "no metrics.json after the resume"
    elif second.rc == 0:  # the same settings as the uninterrupted finished3 run
        change = metrics_equal(base / "copy", ctx.finished3())
    return Check(second, "ok", change=change, problem=problem)


# 23.7: inf timestamp ---------------------------------------------------------------------------------

@case("23.07", "23.7", "an 'inf' timestamp in a generic file", "error")
def _(ctx):
    raw = ctx.csv("log.csv")
    lines = raw.read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:2] + ["inf"])
    raw.write_text("\n".join(lines) + "\n")
    return no_folder(ctx, ctx.dir / "data", ctx.prepare(raw, ctx.dir / "data"))


# 23.8: outputs checked before the work ----------------------------------------------------------------

def a_file(ctx: Ctx) -> Path:
    path = ctx.dir / "a_file"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder\n")
    return path


@case("23.08c", "23.8", "recommend.py --out under a regular file", "error")
def _(ctx):
    run = ctx.finished3()
    return Check(ctx.run(ctx.recommend(run, a_file(ctx) / "recs.csv")), "error")


@case("23.08d", "23.8", "recommend.py --out on a read-only mount", "error")
def _(ctx):
    run, ro = ctx.finished3(), ctx.dir / "ro"
    done = ctx.run(ctx.read_only(ro, ctx.recommend(run, ro / "recs.csv")))
    return Check(done, "error", change="recs.csv written" if (ro / "recs.csv").exists() else None)


@case("23.08e", "23.8", "recommend.py --embeddings at a regular file", "error")
def _(ctx):
    run, recs = ctx.finished3(), ctx.dir / "recs.csv"
    done = ctx.run(ctx.recommend(run, recs, "--embeddings", a_file(ctx)))
    return Check(done, "error", change="recs.csv written before the refusal" if recs.exists() else None)


@case("23.08f", "23.8", "recommend.py --embeddings on a read-only mount", "error")
def _(ctx):
    run, recs, ro = ctx.finished3(), ctx.dir / "recs.csv", ctx.dir / "ro"
    done = ctx.run(ctx.read_only(ro, ctx.recommend(run, recs, "--embeddings", ro / "emb")))
    return Check(done, "error", change="recs.csv written before the refusal" if recs.exists() else None)


@case("23.08g", "23.8", "recommend.py --device cuda on a machine without CUDA", "error")
def _(ctx):
    probe = subprocess.run([PY, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True, env=ctx.env, check=False)
    if "False" not in probe.stdout:
        raise Skip("this machine has CUDA")
    run, recs = ctx.finished3(), ctx.dir / "recs.csv"
    cmd = ctx.recommend(run, recs)[:-2] + ["--device", "cuda"]
    done = ctx.run(cmd)
    return Check(done, "error", change="recs.csv written" if recs.exists() else None)


@case("23.08h", "23.8", "report.py --out under a regular file", "error")
def _(ctx):
    return Check(ctx.run([PY, "experiments/report.py", ctx.finished3(), "--out", a_file(ctx) / "rep"]), "error")


@case("23.08i", "23.8", "report.py --out on a read-only mount", "error")
def _(ctx):
    ro = ctx.dir / "ro"
    return Check(ctx.run(ctx.read_only(ro, [PY, "experiments/report.py", ctx.finished3(), "--out", ro / "rep"])), "error")


def code_copy(ctx: Ctx) -> Path:
    """This checkout's code in the scratch folder: what a relative path resolves against there
    stays out of the repository."""
    if "code" not in ctx._memo:
        dst = ctx.scratch / "checkout"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in ("core", "experiments", "tools", "gin"):
            shutil.copytree(ROOT / name, dst / name, ignore=ignore)
        for name in ("pyproject.toml",):
            if (ROOT / name).exists():
                shutil.copy(ROOT / name, dst / name)
        ctx._memo["code"] = dst
    return ctx._memo["code"]


@case("23.08j", "23.8", "run.py started from a read-only working directory (relative default cache)", "clean")
def _(ctx):
    code, ro = code_copy(ctx), ctx.dir / "ro_cwd"
    cmd = [PY, code / "experiments/run.py", "--gin", "gin/quickstart.gin", "--out", ctx.dir / "run",
           "--gin_bindings", "dataset.synthetic_overrides = {'n_users': 150}", "--gin_bindings", "train.epochs = 1",
           "--gin_bindings", "train.batch_size = 64", "--gin_bindings", "train.device = 'cpu'",
           "--gin_bindings", "train.show_progress = False"]
    return Check(ctx.run(ctx.read_only(ro, cmd, cwd=ro)), "clean")


@case("23.08k", "23.8", "run.py from a read-only working directory, default --out", "clean")
def _(ctx):
    code, ro = code_copy(ctx), ctx.dir / "ro_cwd"
    cmd = [PY, code / "experiments/run.py", "--gin", "gin/quickstart.gin",
           "--gin_bindings", "dataset.synthetic_overrides = {'n_users': 150}", "--gin_bindings", "train.epochs = 1",
           "--gin_bindings", "train.batch_size = 64", "--gin_bindings", "train.device = 'cpu'",
           "--gin_bindings", "train.show_progress = False"]
    return Check(ctx.run(ctx.read_only(ro, cmd, cwd=ro)), "clean")


def signalled(ctx: Ctx, sig: int, *, after: str = "epoch 2:") -> tuple[Outcome, Path]:
    """A LONG run signalled once log.txt shows ``after`` (an event, not a sleep)."""
    out = ctx.dir / "run"
    ctx.fixture_run("finished3", "train.epochs = 3")  # the data cache exists
    proc = ctx.start(ctx.train(out, *LONG))
    log = out / "log.txt"
    ctx.wait_for(proc, lambda: log.exists() and after in log.read_text(errors="replace"), f"'{after}' in log.txt")
    proc.send_signal(sig)
    return ctx.finish(proc), out


def then_resume(ctx: Ctx, out: Path) -> Check:
    reference = ctx.long_ref()
    done = ctx.run(ctx.resume(out))
    change = metrics_equal(out, reference) if done.rc == 0 and (out / "metrics.json").exists() else None
    return Check(done, "ok", change=change)


@case("23.08l", "23.8", "SIGTERM mid-run: one line, exit 143, log.txt says why the run ended", "error")
def _(ctx):
    done, out = signalled(ctx, signal.SIGTERM)
    log = (out / "log.txt").read_text(errors="replace")
    problem = None if "run ended" in log.splitlines()[-1] else f"log.txt ends: {log.splitlines()[-1][:100]}"
    if done.rc != 128 + signal.SIGTERM:
        problem = f"exit {done.rc}, not 143"
    return Check(done, "error", problem=problem)


@case("23.08m", "23.8", "SIGTERM mid-run, then --resume: bit-identical to an uninterrupted run", "ok")
def _(ctx):
    _, out = signalled(ctx, signal.SIGTERM)
    return then_resume(ctx, out)


# 23.9: records of the loss --------------------------------------------------------------------------

for _letter, _loss in zip("abc", ("flash_ce", "flex_ce", "cce")):
    @case(f"23.09{_letter}", "23.9",
          f"{_loss} on a CPU: metrics.json records the loss asked and the loss that ran", "ok")
    def _(ctx, loss=_loss):
        out = ctx.dir / "run"
        done = ctx.run(ctx.train(out, "train.epochs = 1", gin=("gin/quickstart.gin", f"gin/loss/{loss}.gin")))
        problem = None
        if done.rc == 0:
            m = json.loads((out / "metrics.json").read_text())
            log = (out / "log.txt").read_text(errors="replace")
            if m.get("loss") != loss or "loss_ran" not in m or m["loss_ran"] == m["loss"]:
                problem = f"metrics.json: loss {m.get('loss')!r}, loss_ran {m.get('loss_ran')!r}"
            elif f"core.losses.{'cce' if loss == 'cce' else loss.split('_')[0]}" not in log and f"core.losses.{loss}" not in log:
                problem = "the fallback warning is not logged under the loss's own logger"
        return Check(done, "ok", problem=problem)


# 23.10: values validated ----------------------------------------------------------------------------

for _letter, _eps in zip("ab", ("'bogus'", "-1.0")):
    @case(f"23.10{_letter}", "23.10", f"cce.filter_eps = {_eps}", "error")
    def _(ctx, eps=_eps):
        out = ctx.dir / "run"
        return no_folder(ctx, out, ctx.train(out, f"cce.filter_eps = {eps}", "train.epochs = 1",
                                             gin=("gin/quickstart.gin", "gin/loss/cce.gin")))


@case("23.10c", "23.10", "sampled_ce.n_negatives = 100000 on a 500-item catalog (decision: one warning)", "warning")
def _(ctx):
    out = ctx.dir / "run"
    done = ctx.run(ctx.train(out, "sampled_ce.n_negatives = 100000", "train.epochs = 1",
                             gin=("gin/quickstart.gin", "gin/loss/sampled_ce.gin")))
    problem = None
    if done.rc == 0:
        said = [line for line in (out / "log.txt").read_text(errors="replace").splitlines() if "exceeds the catalog" in line]
        if len(said) != 1:
            problem = f"the warning is in log.txt {len(said)} times"
    return Check(done, "warning", problem=problem)


@case("23.10d", "23.10", "core.recommend(run, users='12')", "error")
def _(ctx):
    return Check(ctx.run(ctx.api("recommend_str", ctx.finished3(), "12")), "error")


@case("23.10e", "23.10", "a hand-built SequenceData with item 998 of 500, core.train", "error")
def _(ctx):
    out = ctx.dir / "run"
    return Check(ctx.run(ctx.api("seqdata_oob", out)), "error", change="a run folder was made" if out.exists() else None)


# 23.12: claims ---------------------------------------------------------------------------------------

@case("23.12", "23.12", "the quickstart as documented (2,000 users, 10 epochs) within 120 s on this CPU", "ok")
def _(ctx):
    out = ctx.dir / "run"
    done = ctx.run([PY, "experiments/run.py", "--gin", "gin/quickstart.gin", "--out", out,
                    "--gin_bindings", f"dataset.cache_dir = '{ctx.dir / 'cache'}'"], timeout=max(ctx.timeout_s, 300))
    problem = None if done.rc != 0 or done.seconds <= 120 else f"took {done.seconds:.0f} s"
    return Check(done, "ok", problem=problem, note=f"{done.seconds:.0f} s")


# --- issue 15 categories -----------------------------------------------------------------------------

CHANGED = [("15.01a", "SASRec.dim = 32"), ("15.01b", "train.batch_size = 128"), ("15.02", "train.lr = 0.005"),
           ("15.01c", "train.seed = 1"), ("15.01d", "train.loss_fn = @cce"),
           ("15.01e", "dataset.synthetic_overrides = {'n_users': 200}"), ("15.01f", "train.weight_decay = 0.1")]
for _id, _binding in CHANGED:
    @case(_id, "15 resume changed", f"--resume with train.epochs = 4 and a changed {_binding}", "error")
    def _(ctx, binding=_binding):
        run = ctx.copy_run("finished3", "train.epochs = 3")
        return unchanged(ctx, run, ctx.resume(run, "train.epochs = 4", binding))


@case("15.01g", "15 resume changed", "a refused resume (SASRec.dim = 32) leaves the run resumable", "ok")
def _(ctx):
    run = ctx.copy_run("finished3", "train.epochs = 3")
    ctx.run(ctx.resume(run, "train.epochs = 4", "SASRec.dim = 32"))
    done = ctx.run(ctx.resume(run, "train.epochs = 4"))
    problem = None
    if done.rc == 0 and json.loads((run / "metrics.json").read_text()).get("epochs") != 4:
        problem = "metrics.json does not say 4 epochs"
    return Check(done, "ok", problem=problem)


@case("15.01h", "15 resume changed", "--resume with train.epochs = 4 continues; config.gin says 4", "ok")
def _(ctx):
    run = ctx.copy_run("finished3", "train.epochs = 3")
    done = ctx.run(ctx.resume(run, "train.epochs = 4"))
    problem = None
    if done.rc == 0 and "train.epochs = 4" not in (run / "config.gin").read_text():
        problem = "config.gin does not say train.epochs = 4"
    return Check(done, "ok", problem=problem)


def live_pair(ctx: Ctx) -> tuple[Outcome, Outcome, str, Path]:
    """A LONG run A; once its epoch 1 is logged, a fresh run B and a --resume C into its folder;
    then A is stopped. Shared by the three lock cases."""
    if "live" not in ctx._memo:
        out = ctx.scratch / "live" / "run"
        ctx.fixture_run("finished3", "train.epochs = 3")
        proc = ctx.start(ctx.train(out, "train.epochs = 100000", "train.patience = 100000"))
        log = out / "log.txt"
        ctx.wait_for(proc, lambda: log.exists() and "epoch 1:" in log.read_text(errors="replace"), "epoch 1 in log.txt")
        second = ctx.run(ctx.train(out, "train.epochs = 2"))
        third = ctx.run(ctx.resume(out, "train.epochs = 5"))
        alive = proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        ctx.finish(proc)
        text = log.read_text(errors="replace")
        doubled = [k for k in range(1, 50) if text.count(f"epoch {k}:") > 1]
        problem = "" if alive else "the first run had ended before the others started"
        if doubled:
            problem = f"log.txt has epoch lines twice: {doubled[:5]}"
        ctx._memo["live"] = (second, third, problem, out)
    return ctx._memo["live"]


@case("15.03a", "15 lock", "a second fresh run into the --out of a live run", "error")
def _(ctx):
    second, _, problem, _ = live_pair(ctx)
    return Check(second, "error", problem=problem or None)


@case("15.03b", "15 lock", "--resume of a run that is still training", "error")
def _(ctx):
    _, third, problem, _ = live_pair(ctx)
    return Check(third, "error", problem=problem or None)


@case("15.kill9a", "15 kill -9", "kill -9 in epoch 3, then --resume: bit-identical to an uninterrupted run", "ok")
def _(ctx):
    _, out = signalled(ctx, signal.SIGKILL, after="epoch 3:")
    check = then_resume(ctx, out)
    if check.outcome.rc == 0 and "stale lock" not in (out / "log.txt").read_text(errors="replace"):
        check.problem = "log.txt does not say the stale lock was taken over"
    return check


@case("15.kill9b", "15 kill -9", "kill -9 before the first checkpoint, then --resume", "error")
def _(ctx):
    out = ctx.dir / "run"
    ctx.fixture_run("finished3", "train.epochs = 3")
    proc = ctx.start(ctx.train(out, *LONG, users=2000))
    log = out / "log.txt"
    ctx.wait_for(proc, lambda: log.exists() and "steps/epoch" in log.read_text(errors="replace"), "the run's first log line")
    os.killpg(proc.pid, signal.SIGKILL)
    ctx.finish(proc)
    if (out / "checkpoint.pt").exists():
        raise SetupError("setup: the kill came after the first checkpoint")
    return unchanged(ctx, out, ctx.resume(out))


@case("15.sigint", "15 Ctrl-C", "Ctrl-C (SIGINT) mid-run, then --resume: bit-identical", "ok")
def _(ctx):
    _, out = signalled(ctx, signal.SIGINT)
    return then_resume(ctx, out)


@case("15.sigint2", "15 Ctrl-C", "Ctrl-C (SIGINT) mid-run: the interrupted run's own message (README: 'Not done')", "error")
def _(ctx):
    done, _ = signalled(ctx, signal.SIGINT)
    return Check(done, "error")


@case("15.04", "15 shard", "one flipped byte in a shard's item data (the middle of the file)", "error")
def _(ctx):
    data = ctx.copy_data()
    target = data / "shard_00000.h5"
    flip(target, target.stat().st_size * 3 // 4, 0x01)
    return Check(ctx.run(ctx.api("load", data)), "error")


def doubled_log(ctx: Ctx) -> tuple[Path, list[str]]:
    """The 300-user CSV with every row written twice, and its original lines."""
    raw = ctx.csv("log.csv")
    lines = raw.read_text().splitlines()
    raw.write_text("\n".join([lines[0], *(line for line in lines[1:] for _ in (0, 1))]) + "\n")
    return raw, lines


@case("15.05a", "15 duplicates", "every raw row twice: dropped and counted", "ok")
def _(ctx):
    raw, lines = doubled_log(ctx)
    out = ctx.dir / "data"
    done = ctx.run(ctx.prepare(raw, out))
    problem = None
    if done.rc == 0:
        stats = (out / "stats.json").read_text()
        if str(len(lines) - 1) not in stats:
            problem = f"stats.json does not count the {len(lines) - 1} duplicates"
    return Check(done, "ok", problem=problem)


@case("15.05b", "15 duplicates", "every raw row twice with --keep-duplicates: kept", "ok")
def _(ctx):
    raw, lines = doubled_log(ctx)
    out = ctx.dir / "data"
    done = ctx.run(ctx.prepare(raw, out, "--keep-duplicates"))
    problem = None
    if done.rc == 0:
        stats = json.loads((out / "stats.json").read_text())
        found = json.dumps(stats)
        if str(2 * (len(lines) - 1)) not in found and "keep_duplicates" not in found:
            problem = "stats.json shows neither the kept rows nor the setting"
    return Check(done, "ok", problem=problem)


@case("15.06a", "15 report", "report.py over runs with different lr: one row per setting", "ok")
def _(ctx):
    a = ctx.finished3()
    b = ctx.fixture_run("lr005", "train.epochs = 3", "train.lr = 0.005")
    runs = ctx.dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    shutil.copytree(a, runs / "a")
    shutil.copytree(b, runs / "b")
    out = ctx.dir / "rep"
    done = ctx.run([PY, "experiments/report.py", runs, "--out", out])
    problem = None
    if done.rc == 0:
        md = (out / "report.md").read_text() if (out / "report.md").exists() else ""
        if "0.005" not in md:
            problem = "report.md does not separate the lr 0.005 runs"
    return Check(done, "ok", problem=problem)


@case("15.06b", "15 report", "report.py over a folder holding no runs", "error")
def _(ctx):
    empty = ctx.dir / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    return Check(ctx.run([PY, "experiments/report.py", empty, "--out", ctx.dir / "rep"]), "error")


def bad_value(ctx: Ctx, row: int, col: int, value: str, fmt: str = "generic") -> Check:
    raw = ctx.csv("log.csv", fmt=fmt)
    lines = raw.read_text().splitlines()
    cells = lines[row].split(",")
    cells[col] = value
    lines[row] = ",".join(cells)
    raw.write_text("\n".join(lines) + "\n")
    out = ctx.dir / "data"
    return no_folder(ctx, out, ctx.prepare(raw, out, fmt=fmt))


@case("15.07a", "15 int64", "a timestamp beyond int64 (99999999999999999999), ml20m format", "error")
def _(ctx):
    return bad_value(ctx, 3, 3, "99999999999999999999", fmt="ml20m")


@case("15.07b", "15 int64", "a user id beyond int64, ml20m format", "error")
def _(ctx):
    return bad_value(ctx, 3, 0, "99999999999999999999", fmt="ml20m")


@case("15.07c", "15 int64", "a timestamp 1e30, ml20m format (README: a pandas warning before the line)", "error")
def _(ctx):
    return bad_value(ctx, 3, 3, "1e30", fmt="ml20m")


@case("15.07d", "15 int64", "a timestamp beyond int64, generic format (floats allowed: 1e20 sorts last)", "clean")
def _(ctx):
    check = bad_value(ctx, 3, 2, "99999999999999999999")
    check.expect, check.change = "clean", None  # generic timestamps may be floats: accepting 1e20 is no wrap
    return check


BAD_GIN = [("15.07e", "train.epochs = 'abc'"), ("15.07f", "train.lr = 'fast'"), ("15.07g", "train.batch_size = 0"),
           ("15.07h", "train.max_len = 0"), ("15.07i", "SASRec.dim = 0"), ("15.07j", "train.epochs = -1"),
           ("15.07k", "train.lr = -0.001"), ("15.07l", "train.no_such_parameter = 1"), ("15.07m", "train.epochs = = 3"),
           ("15.07n", "SASRec.n_heads = 3"), ("15.07o", "train.dist_timeout_s = 0")]
for _id, _binding in BAD_GIN:
    @case(_id, "15 gin values", f"{_binding}", "error")
    def _(ctx, binding=_binding):
        out = ctx.dir / "run"
        return no_folder(ctx, out, ctx.train(out, binding))


@case("15.07p", "15 gin values", "a --gin file that does not exist", "error")
def _(ctx):
    out = ctx.dir / "run"
    return no_folder(ctx, out, [PY, "experiments/run.py", "--gin", ctx.dir / "nope.gin", "--out", out])


@case("15.07q", "15 out", "run.py --out under a regular file", "error")
def _(ctx):
    return Check(ctx.run(ctx.train(a_file(ctx) / "run", "train.epochs = 1")), "error")


@case("15.07r", "15 out", "run.py --out on a read-only mount", "error")
def _(ctx):
    ro = ctx.dir / "ro"
    ctx.fixture_run("finished3", "train.epochs = 3")
    return Check(ctx.run(ctx.read_only(ro, ctx.train(ro / "run", "train.epochs = 1"))), "error")


@case("15.07s", "15 out", "run.py --out is a regular file", "error")
def _(ctx):
    target = a_file(ctx)
    return unchanged(ctx, target, ctx.train(target, "train.epochs = 1"))


@case("15.07t", "15 out", "prepare_data.py --out under a regular file", "error")
def _(ctx):
    return Check(ctx.run(ctx.prepare(ctx.csv("log.csv"), a_file(ctx) / "data")), "error")


@case("15.07u", "15 out", "prepare_data.py --out on a read-only mount", "error")
def _(ctx):
    ro = ctx.dir / "ro"
    return Check(ctx.run(ctx.read_only(ro, ctx.prepare(ctx.csv("log.csv"), ro / "data"))), "error")


@case("15.07v", "15 out", "dataset.cache_dir is a regular file", "error")
def _(ctx):
    out = ctx.dir / "run"
    return no_folder(ctx, out, ctx.train(out, f"dataset.cache_dir = '{a_file(ctx)}'", "train.epochs = 1"))


@case("15.08a", "15 NaN", "NaN training loss (train.lr = 1e30, 3 steps an epoch)", "error")
def _(ctx):
    out = ctx.dir / "run"
    ctx.fixture_run("finished3", "train.epochs = 3")
    done = ctx.run(ctx.train(out, "train.lr = 1e30", "train.epochs = 3"))
    problem = None
    log = (out / "log.txt").read_text(errors="replace") if (out / "log.txt").exists() else ""
    if "run ended" not in log:
        problem = "log.txt does not say why the run ended"
    elif "last good epoch (0)" in done.stderr:
        problem = "the message claims a checkpoint of epoch 0"
    return Check(done, "error", problem=problem)


@case("15.08b", "15 NaN", "NaN scores at evaluation (train.lr = 1e30, one step an epoch)", "error")
def _(ctx):
    out = ctx.dir / "run"
    ctx.fixture_run("finished3", "train.epochs = 3")
    return Check(ctx.run(ctx.train(out, "train.lr = 1e30", "train.batch_size = 256", "train.epochs = 3")), "error")


# bad prepare inputs ---------------------------------------------------------------------------------

def prep_case(ctx: Ctx, content: bytes | None, *extra: str, fmt: str = "generic", name: str = "log.csv") -> Check:
    raw = ctx.dir / name
    raw.parent.mkdir(parents=True, exist_ok=True)
    if content is not None:
        raw.write_bytes(content)
    out = ctx.dir / "data"
    return no_folder(ctx, out, ctx.prepare(raw, out, *extra, fmt=fmt))


def good() -> bytes:
    return csv_log(300).encode()


PREP = [
    ("15.in-a", "raw file missing", lambda ctx: prep_case(ctx, None)),
    ("15.in-b", "empty raw file", lambda ctx: prep_case(ctx, b"")),
    ("15.in-c", "header only", lambda ctx: prep_case(ctx, b"user_id,item_id,timestamp\n")),
    ("15.in-d", "a required column missing", lambda ctx: prep_case(ctx, good().replace(b"item_id", b"product", 1))),
    ("15.in-e", "a non-numeric user id (ml20m)", lambda ctx: prep_case(
        ctx, csv_log(300, fmt="ml20m").replace("\n7,", "\nabc,", 1).encode(), fmt="ml20m")),
    ("15.in-f", "a NaN timestamp (generic)", lambda ctx: prep_case(
        ctx, b"\n".join([*good().split(b"\n")[:3], b"2,99,nan", *good().split(b"\n")[3:]]))),
    ("15.in-g", "an unknown --format name", lambda ctx: prep_case(ctx, good(), fmt="movielens")),
    ("15.in-h", "--columns malformed", lambda ctx: prep_case(ctx, good(), "--columns", "user=user_id,item")),
    ("15.in-i", "--columns naming a column the file lacks", lambda ctx: prep_case(ctx, good(), "--columns", "user=uid,item=item_id")),
    ("15.in-j", "every user below the 3-core (2 rows each)", lambda ctx: prep_case(
        ctx, ("user_id,item_id,timestamp\n" + "".join(f"{u},{u % 50 + i},{u * 10 + i}\n" for u in range(1, 200) for i in (1, 2))).encode())),
    ("15.in-k", "a .gz file that is not gzip", lambda ctx: prep_case(ctx, good(), name="log.csv.gz")),
    ("15.in-l", "binary garbage", lambda ctx: prep_case(ctx, random.Random(1).randbytes(5000))),
    ("15.in-m", "a folder as --raw", lambda ctx: (ctx.dir.joinpath("log.csv").mkdir(parents=True), prep_case(ctx, None))[1]),
    ("15.in-n", "--min-user 1", lambda ctx: prep_case(ctx, good(), "--min-user", "1")),
    ("15.in-o", "a truncated .gz file", lambda ctx: prep_case(ctx, gzip.compress(good())[:700], name="log.csv.gz")),
    ("15.in-p", "ragged rows (a row with 5 cells)", lambda ctx: prep_case(ctx, good().replace(b"\n3,", b"\n3,1,2,", 1))),
]
for _id, _name, _fn in PREP:
    case(_id, "15 prepare input", _name, "error")(_fn)


@case("15.in-q", "15 prepare input", "--out already exists (a prepared folder): not merged or overwritten", "error")
def _(ctx):
    data = ctx.copy_data()
    return unchanged(ctx, data, ctx.prepare(ctx.csv("log2.csv", seed=5), data))


@case("15.in-r", "15 prepare input", "a UTF-8 BOM before the header: accepted", "ok")
def _(ctx):
    raw = ctx.dir / "log.csv"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(b"\xef\xbb\xbf" + good())
    return Check(ctx.run(ctx.prepare(raw, ctx.dir / "data")), "ok")


@case("15.10a", "15 prepare kill -9", "kill -9 of prepare_data.py while it writes, then prepare again: no .tmp left", "ok")
def _(ctx):
    out = ctx.dir / "data"
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = ctx.start([PY, "tools/prepare_data.py", "--format", "synthetic", "--preset", "beauty-like", "--out", out, "--quiet"])
    pattern = f".{out.name}.tmp-*"
    ctx.wait_for(proc, lambda: any(out.parent.glob(pattern)), "its temporary folder", limit=ctx.timeout_s)
    os.killpg(proc.pid, signal.SIGKILL)
    ctx.finish(proc)
    if out.exists():
        raise SetupError("setup: the kill came after the folder was complete")
    done = ctx.run(ctx.prepare(ctx.csv("log.csv"), out))
    left = list(out.parent.glob(pattern))
    return Check(done, "ok", problem=f"left behind: {[p.name for p in left]}" if left else None)


@case("15.10b", "15 modes", "prepared data gets ordinary modes (0755 folders, 0644 files)", "ok")
def _(ctx):
    out = ctx.dir / "data"
    old = os.umask(0o022)
    try:
        done = ctx.run(ctx.prepare(ctx.csv("log.csv"), out))
    finally:
        os.umask(old)
    problem = None
    if done.rc == 0:
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in [out, *out.iterdir()]}
        bad = {k: v for k, v in modes.items() if v not in ("0o755", "0o644")}
        problem = f"modes: {bad}" if bad else None
    return Check(done, "ok", problem=problem)


@case("15.11", "15 first command", "gin/beauty_cce.gin offline (download from a closed port)", "error")
def _(ctx):
    out = ctx.dir / "run"
    check = no_folder(ctx, out, [PY, "experiments/run.py", "--gin", "gin/beauty_cce.gin", "--out", out,
                                "--gin_bindings", f"dataset.raw = '{ctx.dir / 'raw' / 'beauty.csv'}'",
                                "--gin_bindings", "dataset.download_url = 'http://127.0.0.1:9/ratings_Beauty.csv'",
                                "--gin_bindings", f"dataset.cache_dir = '{ctx.dir / 'cache'}'",
                                "--gin_bindings", "train.device = 'cpu'"])
    check.tolerate = (LOG_ECHO, r"is missing, downloading it from")  # issue 15.11: it says what it does
    return check


@case("15.12", "15 help", "run.py --help: fast, no torch import", "ok")
def _(ctx):
    done = ctx.run([PY, "-X", "importtime", "experiments/run.py", "--help"])
    problem = "imports torch" if re.search(r"\|\s+torch$", done.stderr, re.MULTILINE) else None
    return Check(done, "ok", problem=problem, tolerate=(r"import time:",), note=f"{done.seconds:.1f} s")


@case("15.rec-a", "15 recommend", "recommend.py --users with an unknown user id", "error")
def _(ctx):
    users = ctx.dir / "users.txt"
    users.parent.mkdir(parents=True, exist_ok=True)
    users.write_text("no-such-user\n")
    recs = ctx.dir / "recs.csv"
    cmd = [PY, "experiments/recommend.py", "--run", ctx.finished3(), "--users", users, "--out", recs, "--device", "cpu"]
    done = ctx.run(cmd)
    return Check(done, "error", change="recs.csv written" if recs.exists() else None)


@case("15.rec-b", "15 recommend", "recommend.py --k 0", "error")
def _(ctx):
    recs = ctx.dir / "recs.csv"
    cmd = ctx.recommend(ctx.finished3(), recs)
    cmd[cmd.index("--k") + 1] = "0"
    return Check(ctx.run(cmd), "error", change="recs.csv written" if recs.exists() else None)


@case("15.rec-c", "15 recommend", "recommend.py --run at a folder that holds no run", "error")
def _(ctx):
    empty = ctx.dir / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    return Check(ctx.run(ctx.recommend(empty, ctx.dir / "recs.csv")), "error")


@case("15.rec-d", "15 recommend", "recommend.py --all on a finished run writes recs.csv (the plain case)", "ok")
def _(ctx):
    recs = ctx.dir / "recs.csv"
    done = ctx.run(ctx.recommend(ctx.finished3(), recs, "--embeddings", ctx.dir / "emb"))
    problem = None
    if done.rc == 0:
        head = recs.read_text().splitlines()[0] if recs.exists() else ""
        problem = None if head == "user,rank,item,score" else f"recs.csv header {head!r}"
    return Check(done, "ok", problem=problem)


# --- the runner ---------------------------------------------------------------------------------------


@dataclass
class Result:
    id: str
    group: str
    case: str
    expected: str
    verdict: str
    why: str
    rc: str
    stderr_lines: int
    first_line: str
    command: str
    seconds: float
    note: str = ""
    stderr_tail: str = ""


def run_case(ctx: Ctx, c: Case) -> Result:
    ctx.dir = ctx.scratch / "cases" / re.sub(r"[^\w.-]", "_", c.id)
    ctx.dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        got = c.fn(ctx)
        checks = got if isinstance(got, list) else [got]
        verdict, why, check = worst(checks)
        out = check.outcome
        lines = [ctx.portable(line) for line in stderr_lines(out.stderr)]
        first = next((line for line in lines if line.startswith("error: ")), lines[0] if lines else "")
        rc = "timeout" if out.timed_out else str(out.rc)
        note = ctx.portable("; ".join(x for x in (why, check.note) if x))
        tail = "\n".join(lines[-8:])
        return Result(c.id, c.group, c.name, c.expect, verdict, why, rc, len(lines), first, out.command,
                      time.monotonic() - start, note, tail[-2000:])
    except Skip as why:
        return Result(c.id, c.group, c.name, c.expect, "skipped", str(why), "", 0, "", "", time.monotonic() - start, str(why))
    except SetupError as why:
        return Result(c.id, c.group, c.name, c.expect, "unexpected", str(why), "", 0, "", "", time.monotonic() - start, str(why))
    except Exception as err:  # noqa: BLE001  (a fault of the case itself: said, and the suite goes on)
        why = f"the attack tool's own case failed: {type(err).__name__}: {err}"
        return Result(c.id, c.group, c.name, c.expect, "unexpected", why, "", 0, "", "", time.monotonic() - start, why)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(ctx.dir)


def summary(results: list[Result]) -> str:
    count = {v: sum(r.verdict == v for r in results) for v in (*VERDICTS, "skipped")}
    line = (f"{len(results)} cases: ok {count['ok']}, traceback {count['traceback']}, hang {count['hang']}, "
            f"silent change {count['silent change']}, unexpected {count['unexpected']}")
    return line + (f", skipped {count['skipped']}" if count["skipped"] else "")


def cut(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def table_md(results: list[Result]) -> str:
    rows = ["| id | group | case | expected | verdict | rc | stderr lines | first stderr line | why |",
            "|---|---|---|---|---|---|---:|---|---|"]
    for r in results:
        cells = [r.id, r.group, r.case, r.expected, f"**{r.verdict}**" if r.verdict != "ok" else "ok", r.rc,
                 str(r.stderr_lines), f"`{cut(r.first_line, 120)}`" if r.first_line else "", cut(r.note, 160)]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def table_text(results: list[Result]) -> str:
    lines = [f"{'id':<11} {'group':<20} {'case':<58} {'expected':<8} {'verdict':<13} first stderr line"]
    for r in results:
        lines.append(f"{r.id:<11} {cut(r.group, 20):<20} {cut(r.case, 58):<58} {r.expected:<8} {r.verdict:<13} "
                     f"{cut(r.first_line or r.note, 90)}")
    return "\n".join(lines)


def write_outputs(results: list[Result], out: Path, command: str, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    names = list(Result.__dataclass_fields__)
    writer.writerow(names)
    for r in results:
        writer.writerow([f"{getattr(r, n):.1f}" if n == "seconds" else getattr(r, n) for n in names])
    write_text(buf.getvalue(), out / "attack.csv")
    md = [f"# Attack suite: {summary(results)}", "",
          f"`{command}` ({seconds / 60:.1f} min; commands of failing cases in attack.csv)", "",
          table_md(results), ""]
    bad = [r for r in results if r.verdict not in ("ok", "skipped")]
    if bad:
        md += ["## Not ok", ""]
        for r in bad:
            md += [f"- **{r.id}** ({r.verdict}) {r.case}: {cut(r.note, 300)}", "", "  ```", f"  $ {r.command}",
                   f"  rc {r.rc}; last stderr lines:", *(f"  {line[:300]}" for line in r.stderr_tail.splitlines()), "  ```"]
        md.append("")
    write_text("\n".join(md), out / "attack.md")


def select(cases: list[Case], only: list[str]) -> list[Case]:
    if not only:
        return cases
    return [c for c in cases if any(c.group == o or c.id == o or c.id.startswith(o + ".") or c.group.startswith(o + " ")
                                    or (o.startswith("15") and c.group.startswith(o)) for o in only)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[],
                        help="a group ('23.5', '15 gin values') or a case id (repeatable)")
    parser.add_argument("--timeout-s", type=float, default=180, help="hard limit per command (default 180)")
    parser.add_argument("--out", help="folder for attack.csv and attack.md")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    args = parser.parse_args(argv)
    cases = select(CASES, args.only)
    if args.list:
        for c in cases:
            print(f"{c.id:<11} {c.group:<20} {c.expect:<8} {c.name}")
        print(f"{len(cases)} cases")
        return 0
    if not cases:
        print(f"error: --only {args.only} matches no case (see --list)", file=sys.stderr)
        return 2
    if args.out:
        blocked = unwritable(args.out)
        if blocked:
            print(f"error: cannot write --out {args.out}: {blocked}", file=sys.stderr)
            return 2
        if Path(args.out).resolve().is_relative_to(ROOT.resolve()) and not str(Path(args.out).resolve()).startswith(
                str((ROOT / "results").resolve())):
            print("note: --out is inside the repository", file=sys.stderr)
    if args.timeout_s <= 0:
        print("error: --timeout-s must be > 0", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleans up like Ctrl-C (the finally below)
    # Started in the background (``cmd &`` without job control) SIGINT is ignored, and children
    # inherit that: a handler here makes theirs the default again (handlers reset on exec), so
    # the Ctrl-C cases really interrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    scratch = Path(tempfile.mkdtemp(prefix="attack-"))
    if scratch.resolve().is_relative_to(ROOT.resolve()):
        print(f"error: the temporary folder {scratch} is inside the repository", file=sys.stderr)
        return 2
    ctx = Ctx(scratch, args.timeout_s)
    command = "OMP_NUM_THREADS=1 python tools/attack.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.monotonic()
    results = []
    try:
        with contextlib.suppress(SetupError):  # the shared data cache, so no case's stderr shows its writing
            ctx.finished3()
        for k, c in enumerate(cases, 1):
            r = run_case(ctx, c)
            results.append(r)
            print(f"[{k}/{len(cases)}] {r.id:<11} {r.verdict:<13} {r.seconds:5.1f} s  {cut(r.case, 70)}"
                  + (f"  -- {cut(r.note, 140)}" if r.verdict != "ok" else ""), flush=True)
    finally:
        if args.keep:
            print(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - started
    if args.out:
        write_outputs(results, Path(args.out), command, seconds)
    print()
    print(table_text(results))
    print(f"{summary(results)} ({seconds / 60:.1f} min)")
    return 0 if all(r.verdict in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
