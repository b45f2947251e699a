"""dataset(): caches it owns are rebuilt when stale or corrupted; prepared folders it does not own
are refused with the command that rebuilds them; temporaries of killed writers are swept."""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core.data.shards import FORMAT_VERSION, DataFormatError
from core.dataset_config import dataset


def ratings(path, n_users=6):
    path.write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},1,{t}\n" for u in range(1, n_users + 1) for t, i in enumerate((10, 20, 30, 40))))
    return path


def own_message(err) -> str:
    """The error's own message, without the line gin appends ("In call to configurable ...")."""
    return str(err.value).split("\n  In call to configurable")[0]


def make_stale(folder):
    """A folder as an older version wrote it: no checksum manifest, version 1 in stats.json."""
    (folder / "manifest.sealed").unlink()
    stats = json.loads((folder / "stats.json").read_text())
    (folder / "stats.json").write_text(json.dumps({**stats, "format_version": 1}))


def flip_a_byte(path, offset=100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_stale_or_corrupted_cache_is_rebuilt(tmp_path):
    config = dict(name="tiny", synthetic_preset="tiny", synthetic_overrides={"n_users": 50},
                  cache_dir=str(tmp_path / "cache"))
    first = dataset(**config)
    make_stale(first.source)
    again = dataset(**config)
    assert again.source == first.source and np.array_equal(again.data.items, first.data.items)
    assert again.data.attrs["format_version"] == FORMAT_VERSION
    flip_a_byte(again.source / "item_ids.h5")
    rebuilt = dataset(**config)
    assert np.array_equal(rebuilt.data.item_ids, first.data.item_ids)


def test_a_stale_prepared_folder_is_refused_with_the_rebuild_command(tmp_path):
    raw = ratings(tmp_path / "r.csv")
    out = tmp_path / "prepared"
    dataset(name="x", raw=str(raw), fmt="ml20m", path=str(out))
    make_stale(out)
    with pytest.raises(DataFormatError) as err:
        dataset(name="x", raw=str(raw), fmt="ml20m", path=str(out))
    message = own_message(err)
    assert "\n" not in message and "stale data format version 1" in message
    assert f"rebuild it: rm -r {out} && python tools/prepare_data.py --format ml20m --raw {raw} --out {out}" in message


def test_prepared_data_with_other_filters_is_refused(tmp_path):
    raw = ratings(tmp_path / "r.csv")
    out = tmp_path / "prepared"
    dataset(name="x", raw=str(raw), fmt="ml20m", path=str(out))
    with pytest.raises(DataFormatError, match=r"was prepared with min_user 3 \(config: 4\): remove it \(rm -r "):
        dataset(name="x", raw=str(raw), fmt="ml20m", path=str(out), min_user=4)
    with pytest.raises(DataFormatError, match=r"keep_duplicates False \(config: True\)"):
        dataset(name="x", raw=str(raw), fmt="ml20m", path=str(out), keep_duplicates=True)


def test_keep_duplicates_is_a_separate_cache(tmp_path):
    raw = tmp_path / "r.csv"
    raw.write_text(ratings(tmp_path / "once.csv").read_text() + "1,10,1,0\n")  # one exact copy
    common = dict(name="x", raw=str(raw), fmt="ml20m", cache_dir=str(tmp_path / "cache"))
    assert len(dataset(**common).data.items) == 24
    assert len(dataset(**common, keep_duplicates=True).data.items) == 25


def test_temporaries_of_dead_writers_are_swept_from_the_cache(tmp_path):
    """Issue 15.10: a killed writer's hidden temporary stayed forever (under any cache name)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    cache = tmp_path / "cache"
    left = cache / f".synthetic-tiny-0123456789.tmp-{int(dead.stdout)}-abc"
    left.mkdir(parents=True)
    (left / "shard_00000.h5").write_bytes(b"partial")
    alive = cache / ".other.tmp-1-xyz"  # pid 1 runs: its temporary is left alone
    alive.mkdir()
    dataset(name="tiny", synthetic_preset="tiny", synthetic_overrides={"n_users": 50}, cache_dir=str(cache))
    assert not left.exists() and alive.exists()


def test_a_changed_raw_file_is_refused_with_the_rebuild_command(tmp_path):
    """Issue 23.4: with dataset.path set, a raw file grown by 60 users trained on the old shards."""
    raw, out = ratings(tmp_path / "r.csv"), tmp_path / "prepared"
    config = dict(name="x", raw=str(raw), fmt="ml20m", path=str(out))
    assert dataset(**config).data.n_users == 6
    ratings(raw, n_users=66)
    with pytest.raises(DataFormatError) as err:
        dataset(**config)
    message = own_message(err)
    assert "\n" not in message and f"{out} was prepared from another version of {raw}" in message
    assert f"rebuild it: rm -r {out} && python tools/prepare_data.py --format ml20m --raw {raw} --out {out}" in message


def test_the_raw_file_is_hashed_only_when_its_size_or_mtime_changed(tmp_path, monkeypatch):
    prepare = importlib.import_module("core.data.prepare")  # core.data.prepare is also a function's name

    raw, out = ratings(tmp_path / "r.csv"), tmp_path / "prepared"
    config = dict(name="x", raw=str(raw), fmt="ml20m", path=str(out))
    dataset(**config)
    hashed, real = [], prepare.file_sha256
    monkeypatch.setattr(prepare, "file_sha256", lambda path, **kw: hashed.append(path) or real(path, **kw))
    dataset(**config)
    assert hashed == []  # size and mtime as recorded: not read
    stat = raw.stat()
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes
    assert dataset(**config).data.n_users == 6 and hashed == [raw]
    raw.write_text(raw.read_text().replace(",40,", ",50,"))  # same size, other bytes, new mtime
    with pytest.raises(DataFormatError, match="prepared from another version"):
        dataset(**config)


def test_a_changed_raw_file_rebuilds_its_cache(tmp_path):
    raw = ratings(tmp_path / "r.csv")
    common = dict(name="x", raw=str(raw), fmt="ml20m", cache_dir=str(tmp_path / "cache"))
    first = dataset(**common)
    ratings(raw, n_users=66)
    again = dataset(**common)
    assert again.source == first.source and again.data.n_users == 66


def test_a_relative_cache_dir_is_taken_from_the_repository_root(tmp_path, monkeypatch):
    """Issue 23.8: dataset.cache_dir 'data/cache' was taken from the working directory, so run.py
    started from a read-only folder ended in a traceback."""
    import core.dataset_config as dataset_config

    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setattr(dataset_config, "REPO_ROOT", repo)
    monkeypatch.chdir(elsewhere)
    got = dataset(name="tiny", synthetic_preset="tiny", synthetic_overrides={"n_users": 50}, cache_dir="data/cache")
    assert got.source.parent == repo / "data" / "cache" and list(elsewhere.iterdir()) == []
