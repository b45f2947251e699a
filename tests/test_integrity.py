"""core.integrity: every single-byte change of a sealed payload or a checked file is refused."""

from __future__ import annotations

import pytest

from core.integrity import CorruptFile, check_file, read_manifest, seal, sha256_file, unseal, write_manifest


def test_unseal_returns_the_payload_and_refuses_every_flipped_byte_and_every_truncation():
    payload = bytes(range(256)) * 3
    blob = seal(payload)
    assert bytes(unseal(blob, "x.pt", "rerun")) == payload
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(CorruptFile, match="x.pt: .*corrupted; rerun"):
            unseal(bytes(bad), "x.pt", "rerun")
    for n in (0, 5, len(blob) - 1):
        with pytest.raises(CorruptFile):
            unseal(blob[:n], "x.pt", "rerun")


def test_check_file_names_the_file_and_the_fix(tmp_path):
    f = tmp_path / "shard.h5"
    f.write_bytes(b"abc" * 1000)
    digest = sha256_file(f)
    check_file(f, digest, "rebuild it")
    f.write_bytes(b"abd" * 1000)
    with pytest.raises(CorruptFile, match="shard.h5: digest mismatch: the file is corrupted; rebuild it"):
        check_file(f, digest, "rebuild it")
    with pytest.raises(CorruptFile, match="cannot be read"):
        check_file(tmp_path / "missing.h5", digest, "rebuild it")


def test_a_manifest_round_trips_and_a_flipped_byte_or_a_foreign_payload_is_one_line(tmp_path):
    path = tmp_path / "manifest.sealed"
    manifest = {"format": "x", "files": {"a.bin": "00" * 32}}
    write_manifest(manifest, path)
    assert read_manifest(path, "rebuild it") == manifest
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptFile, match="manifest.sealed: digest mismatch: the file is corrupted; rebuild it"):
        read_manifest(path, "rebuild it")
    for payload in (b"not json", b"[1, 2]", b'{"files": 3}'):  # sealed, but not a manifest
        path.write_bytes(seal(payload))
        with pytest.raises(CorruptFile, match="not a manifest of this tool"):
            read_manifest(path, "rebuild it")
    with pytest.raises(CorruptFile, match="cannot be read"):
        read_manifest(tmp_path / "missing", "rebuild it")
