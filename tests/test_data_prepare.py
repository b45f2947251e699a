"""End to end: real logs (where present), raw ids, duplicates, the CLI, its bad-input contract,
and what a killed prepare leaves behind."""

import gzip
import json
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.child_env import child_env

from conftest import REPO
from core.data.prepare import prepare_dataset
from core.data.shards import DataFormatError, load_sequences

CLI = [sys.executable, str(REPO / "tools" / "prepare_data.py")]


def test_movielens_100k_3core(shared_data, tmp_path):
    out = prepare_dataset(raw=shared_data / "movielens-100k" / "ratings.csv", fmt="ml20m",
                          out_dir=tmp_path / "ml100k", progress=False)
    data = load_sequences(out)
    assert (data.n_users, data.n_items, len(data.items)) == (943, 1473, 99_723)
    assert len(data.valid_targets()) == len(data.test_targets()) == 943
    assert (data.lengths() - 2).sum() == 99_723 - 2 * 943
    counts = np.bincount(data.items, minlength=data.n_items + 1)[1:]
    assert counts.min() >= 3 and data.lengths().min() >= 3  # k-core holds on the output
    assert data.attrs["source_hash"].startswith("sha256:")


def test_beauty_5core_unchanged(shared_data, tmp_path):
    out = prepare_dataset(raw=shared_data / "amazon-beauty-5core" / "interactions.csv", fmt="generic",
                          out_dir=tmp_path / "beauty", min_user=5, min_item=5,
                          columns="user=user_id,item=item_id,time=timestamp", progress=False)
    data = load_sequences(out)
    assert (data.n_users, data.n_items, len(data.items)) == (22_363, 12_101, 198_502)


def test_time_sort_is_stable_end_to_end(tmp_path):
    raw = tmp_path / "r.csv"
    # user 1: items 30 and 10 tie at t=5 (file order 30 first), 20 comes first in time
    raw.write_text("userId,movieId,rating,timestamp\n1,30,1,5\n1,10,1,5\n1,20,1,1\n2,10,1,0\n2,20,1,0\n2,30,1,0\n")
    data = load_sequences(prepare_dataset(raw=raw, fmt="ml20m", out_dir=tmp_path / "o", min_item=1, progress=False))
    assert data.items.tolist() == [2, 3, 1, 1, 2, 3]  # item ids follow raw ids 10, 20, 30


def test_single_pass_vs_iterative(tmp_path):
    raw = tmp_path / "r.csv"
    rows = {1: [10, 30, 50], 2: [10, 20, 40, 50], 3: [10, 20, 40], 4: [10, 20, 40]}
    raw.write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},1,{t}\n" for u, items in rows.items() for t, i in enumerate(items)))

    def sizes(iterative):
        out = tmp_path / f"o{iterative}"
        data = load_sequences(prepare_dataset(raw=raw, fmt="ml20m", out_dir=out, min_item=2,
                                              iterative=iterative, progress=False))
        return data.n_users, data.n_items, len(data.items)

    # one pass drops item 30, then user 1 (2 items left); item 50 keeps 1 user
    assert sizes(False) == (3, 4, 10)
    assert sizes(True) == (3, 3, 9)  # iterating also drops item 50


def truncated_gzip():
    rows = "".join(f"{u},{u * 7 % 13},3,{u * 31}\n" for u in range(20_000))
    data = gzip.compress(("userId,movieId,rating,timestamp\n" + rows).encode())
    return data[: len(data) // 2]


def run_cli(*args):
    return subprocess.run([*CLI, *map(str, args), "--quiet"], capture_output=True, text=True, cwd=REPO)


def test_cli_user_item_and_summary(tmp_path):
    raw = tmp_path / "seqs.txt.gz"
    raw.write_bytes(gzip.compress("".join(f"{u} {i}\n" for u in range(1, 9) for i in range(1, 6)).encode()))
    result = run_cli("--format", "user-item", "--raw", raw, "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert "8 users, 5 items, 40 interactions" in result.stdout


@pytest.mark.parametrize(
    "make_raw, extra, message",
    [
        (lambda p: None, [], "raw file not found"),
        (lambda p: p.write_text("userId,item\n1,2\n"), [], "missing column"),
        (lambda p: p.write_text("userId,movieId,rating,timestamp\n1,2,3,x\n"), [], "non-numeric value 'x'"),
        (lambda p: p.write_text("userId,movieId,rating,timestamp\n1,2,3,4\n"), [], "no interactions left after filtering"),
        (lambda p: p.write_bytes(truncated_gzip()), [], "truncated"),
        (lambda p: p.write_text("x"), ["--min-user", "2"], "min_user must be >= 3"),
        # issue 15.7: a timestamp beyond int64 was a traceback
        (lambda p: p.write_text("userId,movieId,rating,timestamp\n1,2,3,4\n1,3,3,5\n1,4,3,99999999999999999999\n"),
         [], "line 4: value '99999999999999999999' beyond the 64-bit integer range in column 'timestamp'"),
        # issue 15.12: an id that does not fit was "unparseable values", with no line
        (lambda p: p.write_text("userId,movieId,rating,timestamp\n1,2,3,4\n123456789012345678901,3,3,5\n"),
         [], "line 3: value '123456789012345678901' beyond the 64-bit integer range in column 'userId'"),
        (lambda p: p.write_text("userId,movieId,rating,timestamp\n1,2,3,4\n1,3.5,3,5\n"),
         [], "line 3: non-integer value '3.5' in column 'movieId'"),
        # a float beyond int64 made pandas print a RuntimeWarning ahead of the error line
        (lambda p: p.write_text("userId,movieId,rating,timestamp\n1,2,3,4\n1,3,3,5\n1,4,3,1e30\n"),
         [], "line 4: non-integer value '1e30' in column 'timestamp'"),
    ],
)
def test_cli_bad_input(tmp_path, make_raw, extra, message):
    raw = tmp_path / "ratings.csv.gz" if message == "truncated" else tmp_path / "ratings.csv"
    make_raw(raw)
    result = run_cli("--format", "ml20m", "--raw", raw, "--out", tmp_path / "out", *extra)
    assert result.returncode == (2 if extra else 1)  # 2: a bad argument
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporaries


def test_cli_existing_output_untouched(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = run_cli("--format", "synthetic", "--preset", "tiny", "--out", tmp_path / "out")
    assert result.returncode == 1 and "already exists" in result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_prepare_rejects_unknown_format(tmp_path):
    with pytest.raises(DataFormatError, match="unknown format"):
        prepare_dataset(raw=tmp_path / "x", fmt="parquet", out_dir=tmp_path / "o")


def test_raw_ids_survive_filtering_and_renumbering(tmp_path):
    raw = tmp_path / "r.csv"
    # user 9 has too few rows and is filtered out; ids 3000000000 exceed int32 (fine in int64)
    rows = [(5, 3000000000, 1), (5, 20, 2), (5, 10, 3), (2, 10, 1), (2, 20, 2), (2, 3000000000, 3), (9, 10, 1)]
    raw.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},1,{t}\n" for u, i, t in rows))
    data = load_sequences(prepare_dataset(raw=raw, fmt="ml20m", out_dir=tmp_path / "o", min_item=1, progress=False))
    assert data.user_ids.tolist() == [2, 5] and data.item_ids.tolist() == [0, 10, 20, 3000000000]
    sequences = [data.item_ids[data.items[a:b]].tolist() for a, b in zip(data.offsets[:-1], data.offsets[1:])]
    assert sequences == [[10, 20, 3000000000], [3000000000, 20, 10]]  # raw items in time order per raw user


def test_generic_ids_are_kept_as_written(tmp_path):
    raw = tmp_path / "g.csv"
    raw.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u in ("007", "7")
                                                            for t, i in enumerate(("x1", "x2", "x3"))))
    data = load_sequences(prepare_dataset(raw=raw, fmt="generic", out_dir=tmp_path / "o", min_item=1, progress=False))
    assert data.user_ids.tolist() == ["007", "7"] and data.item_ids.tolist() == ["", "x1", "x2", "x3"]


@pytest.mark.parametrize("fmt, header", [("ml20m", "userId,movieId,rating,timestamp\n"), ("amazon", ""),
                                         ("generic", "user_id,item_id,timestamp\n")])
def test_a_utf8_bom_is_accepted(tmp_path, fmt, header):
    """Issue 15.12: a UTF-8 byte-order mark before the header was refused (or joined the first id)."""
    rating = ",1.0" if fmt != "generic" else ""
    body = "".join(f"{u},{i}{rating},{t}\n" for u in (1, 2) for t, i in enumerate((10, 20, 30)))
    raw = tmp_path / "bom.csv"
    raw.write_bytes(b"\xef\xbb\xbf" + (header + body).encode())
    result = run_cli("--format", fmt, "--raw", raw, "--out", tmp_path / "o", "--min-item", "1")
    assert result.returncode == 0, result.stderr
    data = load_sequences(tmp_path / "o")
    assert [str(u) for u in data.user_ids] == ["1", "2"]  # no BOM glued to the first id


def doubled_log(path):
    """Every row of a small log written twice: the duplicated-export mistake of issue 15.5."""
    rows = "".join(f"{u},{i},1,{t}\n" for u in range(1, 5) for t, i in enumerate((10, 20, 30, 40)))
    path.write_text("userId,movieId,rating,timestamp\n" + rows + rows)
    return path


def test_exact_duplicates_are_dropped_and_counted(tmp_path, caplog):
    """Issue 15.5: duplicated rows were kept silently (validation and test targets then coincide)."""
    raw = doubled_log(tmp_path / "r.csv")
    with caplog.at_level(logging.INFO, logger="core.data"):
        out = prepare_dataset(raw=raw, fmt="ml20m", out_dir=tmp_path / "o", progress=False)
    data = load_sequences(out)
    assert (data.n_users, len(data.items)) == (4, 16)
    assert (data.valid_targets() != data.test_targets()).all()
    assert json.loads((out / "stats.json").read_text())["duplicates"] == {"rows": 16, "dropped": True}
    assert "dropped 16 exact duplicate (user, item, time) rows" in caplog.text


def test_keep_duplicates_keeps_them(tmp_path):
    raw = doubled_log(tmp_path / "r.csv")
    result = run_cli("--format", "ml20m", "--raw", raw, "--out", tmp_path / "o", "--keep-duplicates")
    assert result.returncode == 0, result.stderr
    assert "4 users, 4 items, 32 interactions" in result.stdout
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["duplicates"] == {"rows": 16, "dropped": False}
    dropped = run_cli("--format", "ml20m", "--raw", raw, "--out", tmp_path / "d")
    assert "16 interactions" in dropped.stdout and "16 exact duplicate rows dropped" in dropped.stdout


def test_same_time_different_item_is_not_a_duplicate(tmp_path):
    raw = tmp_path / "r.csv"
    raw.write_text("userId,movieId,rating,timestamp\n1,10,1,5\n1,20,1,5\n1,10,1,6\n1,30,1,5\n")
    data = load_sequences(prepare_dataset(raw=raw, fmt="ml20m", out_dir=tmp_path / "o", min_item=1, progress=False))
    assert len(data.items) == 4


# Runs tools/prepare_data.py with h5py.File patched to hang in the second shard write: a kill lands mid-write.
_HANG_IN_SHARD_WRITE = """
import sys, time, h5py
real, opened = h5py.File, []
def slow(name, mode="r", *args, **kwargs):
    if mode == "w":
        opened.append(name)
        if len(opened) == 2:
            print("writing", flush=True)
            time.sleep(600)
    return real(name, mode, *args, **kwargs)
h5py.File = slow
sys.argv = ["prepare_data.py"] + sys.argv[1:]
import runpy
runpy.run_path("tools/prepare_data.py", run_name="__main__")
"""


def test_kill_9_leaves_no_hidden_temporaries(tmp_path):
    """Issue 15.10: a killed prepare left a hidden .NAME.tmp-* folder of partial shards forever."""
    raw = tmp_path / "ratings.csv"
    raw.write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},1,{t}\n" for u in range(1, 120_001) for t, i in enumerate((u % 7, 7 + u % 5, 20))))
    out = tmp_path / "data" / "ml"
    proc = subprocess.Popen([sys.executable, "-c", _HANG_IN_SHARD_WRITE, "--format", "ml20m", "--raw", str(raw),
                             "--out", str(out), "--quiet"], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=child_env())
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    hidden = lambda: [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # noqa: E731
    assert hidden() and not out.exists()  # the kill did leave a partial temporary behind
    # The next prepare into the same parent folder (any name) removes it.
    again = run_cli("--format", "synthetic", "--preset", "tiny", "--out", out.parent / "other")
    assert again.returncode == 0, again.stderr
    assert hidden() == []


def test_the_tool_and_a_configured_dataset_prepare_the_same_data(tmp_path):
    """One preparation: tools/prepare_data.py and dataset() give identical shards."""
    from core.dataset_config import dataset

    raw = doubled_log(tmp_path / "r.csv")
    assert run_cli("--format", "ml20m", "--raw", raw, "--out", tmp_path / "tool").returncode == 0
    configured = dataset(name="x", raw=str(raw), fmt="ml20m", path=str(tmp_path / "configured")).data
    tool = load_sequences(tmp_path / "tool")
    for field in ("offsets", "items", "user_ids", "item_ids"):
        assert np.array_equal(getattr(tool, field), getattr(configured, field)), field
    assert tool.attrs["duplicates"] == configured.attrs["duplicates"]


@pytest.mark.parametrize("where", ["under_a_file", "a_file", "read_only"])
def test_an_out_that_cannot_be_written_is_one_line_before_any_work(tmp_path, where, capsys):
    """The file cases run as root too (CI's user); "read_only" (chmod) only without root."""
    from tools import prepare_data

    if where != "read_only":
        (tmp_path / "f").write_text("x")
        out, expect = (tmp_path / "f" / "d" if where == "under_a_file" else tmp_path / "f"), "is a file"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out, expect = ro / "d", "is not writable"
    rc = prepare_data.main(["--format", "synthetic", "--preset", "tiny", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: cannot write --out") and expect in err and "\n" not in err


def _file_size_limit(limit):
    """A full disk, for one child: writes past ``limit`` bytes fail (EFBIG) instead of killing it."""
    def limited():
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limited


@pytest.mark.parametrize("limit", [2_000, 20_000, 100_000])
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, limit):
    """Issue 23.6: on a full disk tools/prepare_data.py printed 48 lines of HDF5 errors and then
    crashed with a segmentation fault (rc 139)."""
    out = tmp_path / "data" / "tiny"
    result = subprocess.run([*CLI, "--format", "synthetic", "--preset", "tiny", "--out", str(out), "--quiet"],
                            capture_output=True, text=True, cwd=REPO, env=child_env(),
                            preexec_fn=_file_size_limit(limit))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"error: cannot write {out}: File too large (nothing was written)")
    assert list(out.parent.iterdir()) == []  # no folder, no temporary


def test_a_really_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """The same on a 64 KiB tmpfs (ENOSPC), where user namespaces allow mounting one."""
    small = tmp_path / "small"
    small.mkdir()
    mount = f"mount -t tmpfs -o size=64k tmpfs {small}"
    if subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (no unshare or no user namespaces)")
    prepare = " ".join([*CLI, "--format synthetic --preset tiny --quiet --out", str(small / "tiny")])
    script = f"{mount} && {prepare}; echo rc $? >&2; ls -A {small} >&2"
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=REPO,
                            env=child_env())
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: cannot write {small / 'tiny'}: No space left on device (nothing was written)",
                     "rc 1"], result.stderr[-2000:]
