"""Key files: mode 0600, atomic, refused when others can read them; key ids and claims."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edge_protocol.errors import KeyFileError
from edge_protocol.keys import (
    Signer,
    Verifier,
    claim_tag,
    parse_public_key,
    read_private_key,
    write_private_key,
)


def test_private_key_round_trip_and_mode(tmp_path: Path) -> None:
    signer = Signer.generate()
    path = tmp_path / "device.key"
    write_private_key(path, signer)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = read_private_key(path)
    assert again.public_key == signer.public_key
    assert [p.name for p in tmp_path.iterdir()] == ["device.key"]  # no temp file left behind
    assert signer.seed.hex() not in repr(signer)


def test_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_private_key(path, Signer.generate())
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="accessible by other users") as e:
        read_private_key(path)
    assert e.value.hint == f"chmod 600 {path}"


@pytest.mark.parametrize("content", ["", "zz", "00" * 31, "00" * 33])
def test_malformed_key_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        read_private_key(path)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        read_private_key(tmp_path / "nope")


def test_verifier_and_claim() -> None:
    s = Signer.generate()
    v = Verifier(s.public_key)
    assert v.kid == s.kid
    assert v.verify(b"x", s.sign(b"x"))
    assert not v.verify(b"y", s.sign(b"x"))
    assert not v.verify(b"x", b"\x00" * 64)
    token = bytes(32)
    assert claim_tag(token, s.public_key, "dev-01") != claim_tag(token, s.public_key, "dev-02")
    with pytest.raises(ValueError, match="32 bytes"):
        claim_tag(b"short", s.public_key, "dev-01")
    assert parse_public_key(s.public_key.hex()) == s.public_key
    with pytest.raises(ValueError, match="64 hex"):
        parse_public_key("xyz")
