"""HDF5 shards: round trip, split accessors, atomic writes, stale/foreign/mixed files."""

import h5py
import numpy as np
import pytest

from core.data.shards import FORMAT_VERSION, DataFormatError, SequenceData, load_sequences, write_shards


def small(seed=0, n_users=11, n_items=30):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 9, n_users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(1, n_items + 1, offsets[-1]).astype(np.int32)
    return offsets, items, n_items


def test_round_trip_over_several_shards(tmp_path):
    offsets, items, n_items = small()
    out = write_shards(tmp_path / "ds", offsets=offsets, items=items, n_items=n_items,
                       attrs={"source": "test", "filters": {"min_user": 3}}, users_per_shard=4)
    assert len(list(out.glob("shard_*.h5"))) == 3
    data = load_sequences(out)
    assert np.array_equal(data.offsets, offsets) and np.array_equal(data.items, items)
    assert (data.n_users, data.n_items) == (11, n_items)
    assert data.attrs["filters"] == {"min_user": 3} and data.attrs["format_version"] == FORMAT_VERSION
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary folder left


def test_split_accessors_and_item_user_counts():
    offsets = np.array([0, 4, 7, 12])
    items = np.array([1, 2, 1, 3,  2, 2, 4,  3, 1, 3, 4, 2], dtype=np.int32)
    data = SequenceData(offsets=offsets, items=items, n_users=3, n_items=4)
    assert data.lengths().tolist() == [4, 3, 5]
    assert data.valid_targets().tolist() == [1, 2, 4] and data.test_targets().tolist() == [3, 4, 2]
    # train sequences: [1, 2], [2], [3, 1, 3] -> distinct users per item
    assert data.train_item_user_counts().tolist() == [0, 2, 2, 1, 0]


def test_split_sizes_sum_up(tmp_path):
    offsets, items, n_items = small(1, n_users=50)
    data = load_sequences(write_shards(tmp_path / "d", offsets=offsets, items=items, n_items=n_items, attrs={}))
    assert len(data.valid_targets()) == len(data.test_targets()) == 50
    assert (data.lengths() - 2).sum() + 2 * 50 == len(data.items)


def test_write_refuses_existing_and_bad_input(tmp_path):
    offsets, items, n_items = small()
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        write_shards(tmp_path / "exists", offsets=offsets, items=items, n_items=n_items, attrs={})
    with pytest.raises(DataFormatError, match="fewer than 3"):
        write_shards(tmp_path / "short", offsets=np.array([0, 2]), items=items[:2], n_items=n_items, attrs={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def corrupt(tmp_path, edit):
    offsets, items, n_items = small()
    out = write_shards(tmp_path / "ds", offsets=offsets, items=items, n_items=n_items, attrs={}, users_per_shard=4)
    edit(out)
    with pytest.raises(DataFormatError) as err:
        load_sequences(out)
    return str(err.value)


def test_stale_version(tmp_path):
    def edit(out):
        with h5py.File(out / "shard_00001.h5", "a") as f:
            f.attrs["format_version"] = FORMAT_VERSION - 1
    assert "stale format version" in corrupt(tmp_path, edit)


def test_foreign_hdf5_and_non_hdf5(tmp_path):
    def foreign(out):
        with h5py.File(out / "shard_00000.h5", "w") as f:
            f.create_dataset("x", data=[1])
    assert "foreign" in corrupt(tmp_path / "a", foreign)
    assert "cannot read as HDF5" in corrupt(tmp_path / "b", lambda out: (out / "shard_00002.h5").write_bytes(b"junk"))


def test_missing_or_mixed_shards(tmp_path):
    assert "found 2 shards" in corrupt(tmp_path / "a", lambda out: (out / "shard_00001.h5").unlink())

    def mix(out):
        other = write_shards(out.parent / "other", offsets=small()[0], items=small()[1], n_items=30, attrs={},
                             users_per_shard=4)
        (other / "shard_00001.h5").replace(out / "shard_00001.h5")
    assert "different write" in corrupt(tmp_path / "b", mix)
    with pytest.raises(DataFormatError, match="no prepared dataset"):
        load_sequences(tmp_path / "nowhere")
