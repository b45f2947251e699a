"""End to end: real logs (where present), the CLI, and its bad-input contract."""

import gzip
import subprocess
import sys

import numpy as np
import pytest

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
    ],
)
def test_cli_bad_input(tmp_path, make_raw, extra, message):
    raw = tmp_path / "ratings.csv.gz" if message == "truncated" else tmp_path / "ratings.csv"
    make_raw(raw)
    result = run_cli("--format", "ml20m", "--raw", raw, "--out", tmp_path / "out", *extra)
    assert result.returncode == 1
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
