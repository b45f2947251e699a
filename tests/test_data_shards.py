"""HDF5 shards: round trip with raw ids, split accessors, atomic writes, checksums, modes,
stale/foreign/mixed files."""

import json
import os

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


def test_raw_ids_round_trip(tmp_path):
    offsets, items, n_items = small(n_users=5, n_items=6)
    users = np.array(["007", "7", "Zoë", "A1B2", "-3"])  # strings as read: "007" is not "7"
    item_ids = np.array([2**62, -5, 0, 17, 3, 9], dtype=np.int64)  # int64 beyond int32, 0 a real id
    data = load_sequences(write_shards(tmp_path / "ds", offsets=offsets, items=items, n_items=n_items,
                                       attrs={}, user_ids=users, item_ids=item_ids, users_per_shard=2))
    assert data.user_ids.tolist() == users.tolist() and data.user_ids.dtype.kind == "U"
    assert data.item_ids.dtype == np.int64 and data.item_ids[1:].tolist() == item_ids.tolist()
    assert data.item_ids[0] == 0 and len(data.item_ids) == n_items + 1  # index 0: the padding slot


def test_ids_default_to_the_internal_ones(tmp_path):
    offsets, items, n_items = small(n_users=4)
    data = load_sequences(write_shards(tmp_path / "ds", offsets=offsets, items=items, n_items=n_items, attrs={}))
    assert data.user_ids.tolist() == [0, 1, 2, 3] and data.item_ids.tolist() == list(range(n_items + 1))
    in_memory = SequenceData(offsets=offsets, items=items, n_users=4, n_items=n_items)
    assert in_memory.item_ids.tolist() == list(range(n_items + 1))


def make_old(folder, version=2, **stats):
    """A folder as an older version wrote it: no manifest, its version in stats.json."""
    (folder / "manifest.sealed").unlink()
    old = json.loads((folder / "stats.json").read_text())
    (folder / "stats.json").write_text(json.dumps({**old, **stats, "format_version": version}))


def test_stale_version_names_the_rebuild_command(tmp_path):
    """Decision of issue 23.1: a folder without a manifest (format 1 or 2) is refused as stale."""
    message = corrupt(tmp_path, lambda out: make_old(out, 1, source="amazon:ratings_Beauty.csv"))
    assert "\n" not in message and "stale data format version 1" in message
    assert f"rebuild it: rm -r {tmp_path / 'ds'} && python tools/prepare_data.py --format amazon --raw " in message


def change_middle_value(path, name, still_valid=False):
    """Changes one byte of the middle element of dataset ``name`` (its first chunk) in the file.

    ``still_valid``: the element (an item id) becomes another id in range, so that only a
    checksum can tell; else its lowest byte is flipped.
    """
    with h5py.File(path, "r") as f:
        dset = f[name]
        if dset.chunks is None:  # contiguous (format 1)
            start, n = dset.id.get_offset(), dset.shape[0]
        else:
            start, n = dset.id.get_chunk_info(0).byte_offset, dset.chunks[0]
        middle = start + (n // 2) * dset.dtype.itemsize  # lowest byte: little-endian
        value = int(dset[n // 2])
    raw = bytearray(path.read_bytes())
    raw[middle] = (1 if value != 1 else 2) if still_valid else raw[middle] ^ 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name", ["items", "offsets", "user_ids"])
def test_a_changed_byte_inside_the_data_is_refused(tmp_path, name):
    """Issue 15.4: a single changed byte in a shard used to load (and train) silently."""
    message = corrupt(tmp_path, lambda out: change_middle_value(out / "shard_00001.h5", name, name == "items"))
    assert "\n" not in message and "shard_00001.h5: digest mismatch: the file is corrupted" in message
    assert "rebuild it:" in message


def test_a_changed_byte_in_the_item_ids_is_refused(tmp_path):
    message = corrupt(tmp_path, lambda out: change_middle_value(out / "item_ids.h5", "item_ids"))
    assert "item_ids.h5: digest mismatch" in message


def test_prepared_data_gets_ordinary_modes(tmp_path):
    """Issue 15.10: prepared folders came out 0700 (mkdtemp's private mode)."""
    offsets, items, n_items = small()
    mask = os.umask(0o022)
    try:
        out = write_shards(tmp_path / "ds", offsets=offsets, items=items, n_items=n_items, attrs={})
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}


def test_foreign_hdf5_and_non_hdf5(tmp_path):
    def foreign(out):
        with h5py.File(out / "shard_00000.h5", "w") as f:
            f.create_dataset("x", data=[1])
    assert "shard_00000.h5: digest mismatch" in corrupt(tmp_path / "a", foreign)
    assert "shard_00002.h5: digest mismatch" in corrupt(tmp_path / "b", lambda out: (out / "shard_00002.h5").write_bytes(b"junk"))


def test_missing_or_mixed_shards(tmp_path):
    assert "shard_00001.h5 is missing" in corrupt(tmp_path / "a", lambda out: (out / "shard_00001.h5").unlink())

    def mix(out):
        other = write_shards(out.parent / "other", offsets=small()[0], items=small()[1], n_items=30, attrs={},
                             users_per_shard=4)
        (other / "shard_00001.h5").replace(out / "shard_00001.h5")
    assert "shard_00001.h5: digest mismatch" in corrupt(tmp_path / "b", mix)
    with pytest.raises(DataFormatError, match="no prepared dataset"):
        load_sequences(tmp_path / "nowhere")


def _flip_each_byte(path, step=1):
    """Yields after flipping each ``step``-th byte of ``path`` in place (restored afterwards)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for offset in range(0, size, step):
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
            f.flush()
            yield offset
            f.seek(offset)
            f.write(byte)
            f.flush()


def test_every_flipped_byte_is_refused_before_any_file_is_parsed(tmp_path, monkeypatch):
    """Issue 23.1: a flipped byte in the attribute region of item_ids.h5 hung load_sequences, others
    gave h5py tracebacks or silently changed attributes. Every byte of a shard, of item_ids.h5, of
    stats.json and of the manifest is flipped in turn: each flip is refused with one line naming the
    file and the rebuild command, and h5py never opens a corrupted file (so it cannot hang)."""
    offsets, items, n_items = small(n_users=6)
    out = write_shards(tmp_path / "ds", offsets=offsets, items=items, n_items=n_items,
                       attrs={"source": "synthetic:tiny", "synthetic": {"preset": "tiny", "seed": 0},
                              "filters": {"min_user": 3}}, users_per_shard=3)
    real_file = h5py.File

    def no_parsing(*args, **kwargs):
        raise AssertionError("h5py opened a file of a corrupted folder")

    monkeypatch.setattr(h5py, "File", no_parsing)
    rebuild = f"rebuild it: rm -r {out} && python tools/prepare_data.py --format synthetic --preset tiny"
    names = ["shard_00001.h5", "item_ids.h5", "stats.json", "manifest.sealed"]
    for name in names:
        for offset in _flip_each_byte(out / name):
            with pytest.raises(DataFormatError) as err:
                load_sequences(out)
            message = str(err.value)
            assert "\n" not in message and name in message and rebuild in message, (name, offset, message)
    monkeypatch.setattr(h5py, "File", real_file)
    data = load_sequences(out)  # every byte restored: loads again, unchanged
    assert np.array_equal(data.items, items) and np.array_equal(data.offsets, offsets)


def test_a_changed_attribute_or_id_map_is_refused(tmp_path):
    """Issue 23.1: attributes carry no fletcher32 checksum; a changed one (filters) loaded silently."""
    def edit(out):
        with h5py.File(out / "shard_00000.h5", "a") as f:
            f.attrs["filters"] = 'json:{"mhn_user": 3}'
    message = corrupt(tmp_path / "a", edit)
    assert "shard_00000.h5: digest mismatch: the file is corrupted; rebuild it: rm -r" in message

    def new_ids(out):
        with h5py.File(out / "item_ids.h5", "a") as f:
            del f["item_ids"]
            f.create_dataset("item_ids", data=np.arange(31)[::-1], fletcher32=True, chunks=(31,))
    assert "item_ids.h5: digest mismatch" in corrupt(tmp_path / "b", new_ids)


def test_a_file_missing_from_or_added_to_the_folder_is_refused(tmp_path):
    assert "shard_00001.h5 is missing" in corrupt(tmp_path / "a", lambda out: (out / "shard_00001.h5").unlink())
    extra = corrupt(tmp_path / "b", lambda out: (out / "shard_00003.h5").write_bytes((out / "shard_00000.h5").read_bytes()))
    assert "shard_00003.h5 is not part of this dataset" in extra and "rebuild it:" in extra


@pytest.mark.parametrize("change, message", [
    (lambda o, i: (o, np.where(i == i[-1], 998, i).astype(np.int32), 11), r"item ids outside 1\.\.30 \(found 1\.\.998\)"),
    (lambda o, i: (o, np.where(i == i[0], 0, i).astype(np.int32), 11), r"item ids outside 1\.\.30 \(found 0\.\."),
    (lambda o, i: (o, i, 12), "offsets describe 11 users, n_users is 12"),
    (lambda o, i: (np.concatenate([[0, 2], o[1:] + 2]), np.concatenate([[1, 2], i]).astype(np.int32), 12),
     "a user has fewer than 3 items"),
], ids=["item 998", "item 0", "n_users", "a short user"])
def test_a_hand_built_sequence_data_is_checked_when_built(change, message):
    """Issue 23.10: an out-of-range item trained, then failed at test time ('index 998 is out of
    bounds'); it is refused when the SequenceData is made, in one line."""
    offsets, items, n_items = small()
    offsets, items, n_users = change(offsets, items)
    with pytest.raises(DataFormatError, match=f"^SequenceData: {message}") as err:
        SequenceData(offsets=offsets, items=items, n_users=n_users, n_items=n_items)
    assert "\n" not in str(err.value)
