"""core.integrity: every single-byte change of a sealed payload or a checked file is refused."""

from __future__ import annotations

import pytest

from core.integrity import CorruptFile, check_file, seal, sha256_file, unseal


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
