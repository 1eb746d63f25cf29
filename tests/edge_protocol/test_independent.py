"""Cross-check against an independent implementation of docs/protocol.md written here from the spec alone:
its own canonical CBOR encoder (no cbor2), Ed25519 from `cryptography` (not PyNaCl). Its envelopes must
open in edgeseal, edgeseal's must verify in it, byte for byte equal, and its forgeries must be refused."""

from __future__ import annotations

import math
import struct
from typing import Any

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_protocol.envelope import EnvelopeError, Verdict, open_envelope, seal
from edge_protocol.keys import Signer


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * width):
            return bytes([major << 5 | info]) + n.to_bytes(width, "big")
    raise ValueError("too large")


def _float(x: float) -> bytes:
    for fmt, head in (("e", 0xF9), ("f", 0xFA)):
        try:
            packed = struct.pack(">" + fmt, x)
        except OverflowError:
            continue
        if struct.unpack(">" + fmt, packed)[0] == x:
            return bytes([head]) + packed
    return b"\xfb" + struct.pack(">d", x)


def cbor(v: Any) -> bytes:
    """RFC 8949 §4.2.1 core deterministic encoding of the data model edgeseal uses."""
    if v is False:
        return b"\xf4"
    if v is True:
        return b"\xf5"
    if v is None:
        return b"\xf6"
    if isinstance(v, int):
        return _head(0, v) if v >= 0 else _head(1, -1 - v)
    if isinstance(v, float):
        assert math.isfinite(v)
        return _float(v)
    if isinstance(v, bytes):
        return _head(2, len(v)) + v
    if isinstance(v, str):
        b = v.encode()
        return _head(3, len(b)) + b
    if isinstance(v, list):
        return _head(4, len(v)) + b"".join(cbor(i) for i in v)
    if isinstance(v, dict):
        items = sorted((cbor(k), cbor(val)) for k, val in v.items())  # bytewise order of encoded keys
        return _head(5, len(items)) + b"".join(k + val for k, val in items)
    raise TypeError(type(v))


class Independent:
    def __init__(self, seed: bytes, fleet: str) -> None:
        self.key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.kid = blake3.blake3(self.public, derive_key_context="edgeseal 2026 v1 key id").digest()[:16]
        self.aad = f"edgeseal:v1:{fleet}".encode()

    def sig_structure(self, protected: bytes, payload: bytes) -> bytes:
        return cbor(["Signature1", protected, self.aad, payload])

    def seal(self, payload: dict[int, Any]) -> bytes:
        body = cbor(payload)
        protected = cbor({1: -19, 4: self.kid})
        sig = self.key.sign(self.sig_structure(protected, body))
        return b"\xd2" + cbor([protected, {}, body, sig])

    def verify(self, cose: bytes, public: bytes) -> bool:
        # the envelope's fixed layout: d2 84 55 <protected 21> a0 <bstr payload> 58 40 <sig>
        assert cose[:3] == b"\xd2\x84\x55"
        protected = cose[3:24]
        assert cose[24] == 0xA0
        head = cose[25]
        n, off = (
            (head & 0x1F, 26)
            if head & 0x1F < 24
            else ((cose[26], 27) if head & 0x1F == 24 else (int.from_bytes(cose[26:28], "big"), 28))
        )
        body = cose[off : off + n]
        assert cose[off + n : off + n + 2] == b"\x58\x40"
        sig = cose[off + n + 2 :]
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(sig, self.sig_structure(protected, body))
        except Exception:
            return False
        return True


SEED = bytes(range(100, 132))
ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
leaves = (
    st.integers(-(2**53 - 1), 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
nested = st.recursive(
    leaves | st.binary(max_size=20) | st.booleans() | st.none(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text("abcdefgh", min_size=1, max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def results(draw: st.DrawFn) -> dict[int, Any]:
    return {
        0: 1, 1: draw(ids), 2: draw(st.integers(0, 2**40)), 3: draw(st.integers(0, 2**40)),
        4: draw(st.binary(min_size=32, max_size=32)), 5: draw(st.integers(0, 2**53 - 1)), 6: 1, 7: draw(ids),
        8: draw(st.binary(min_size=32, max_size=32)), 9: draw(st.binary(min_size=32, max_size=32)),
        10: draw(st.dictionaries(st.text("abcdefghijklmnop", min_size=1, max_size=10), nested, max_size=4)),
    }  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(results())
def test_both_ways(payload: dict[int, Any]) -> None:
    other = Independent(SEED, "demo")
    ours = Signer.from_seed(SEED)
    theirs = other.seal(payload)
    assert theirs == seal(payload, ours, "demo").cose  # Ed25519 is deterministic: byte-identical
    assert open_envelope(theirs, "demo", other.public).payload == payload
    assert other.verify(seal(payload, ours, "demo").cose, ours.public_key)


def test_independent_forgeries_are_refused() -> None:
    genuine = Independent(SEED, "demo")
    stranger = Independent(bytes(32), "demo")
    other_fleet = Independent(SEED, "other")
    p = {0: 1, 1: "dev-01", 2: 1, 3: 1, 4: bytes(32), 5: 1, 6: 1, 7: "vib", 8: bytes(32), 9: bytes(32),
         10: {"label": "normal"}}  # fmt: skip
    cases = [
        (stranger.seal(p), Verdict.UNKNOWN_KEY),
        (other_fleet.seal(p), Verdict.BAD_SIGNATURE),
        (genuine.seal({**p, 10: {"label": "normal", "x": 1}})[:-1] + b"\x00", Verdict.BAD_SIGNATURE),
        (genuine.seal({**p, 24: 1}), Verdict.MALFORMED),
        (genuine.seal({**p, 10: {"s": 1.0000000000000002}}), None),
    ]
    for cose, verdict in cases:
        if verdict is None:
            open_envelope(cose, "demo", genuine.public)
            continue
        with pytest.raises(EnvelopeError) as e:
            open_envelope(cose, "demo", genuine.public)
        assert e.value.verdict is verdict
