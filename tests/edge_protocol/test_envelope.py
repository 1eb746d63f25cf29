"""Envelope properties: round trips, single-bit changes, strictness, limits (docs/protocol.md §2 to §4)."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_protocol.envelope import (
    MAX_ENVELOPE_BYTES,
    EnvelopeError,
    KeyRing,
    Verdict,
    decode_payload,
    decode_unverified,
    open_envelope,
    protected_header,
    seal,
    sig_structure,
)
from edge_protocol.keys import Signer
from edge_protocol.payload import INT_MAX, INT_MIN, MAX_DEPTH, MAX_TEXT_KEY_BYTES, UINT_MAX, Key, Kind

SIGNER = Signer.from_seed(bytes(range(32)))
OTHER = Signer.from_seed(bytes(range(1, 33)))
FLEET = "demo"

text_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
leaves = (
    st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
    | st.booleans()
    | st.none()
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text_keys, inner, max_size=4),
    max_leaves=20,
)
ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)


@st.composite
def result_payloads(draw: st.DrawFn) -> dict[int, object]:
    p: dict[int, object] = {
        Key.V: 1,
        Key.DEV: draw(ids),
        Key.BOOT: draw(st.integers(0, 2**32)),
        Key.SEQ: draw(st.integers(0, 2**32)),
        Key.PREV: draw(st.binary(min_size=32, max_size=32)),
        Key.T: draw(st.integers(0, UINT_MAX)),
        Key.KIND: int(Kind.RESULT),
        Key.PIPE: draw(ids),
        Key.MODEL: draw(st.binary(min_size=32, max_size=32)),
        Key.INPUT: draw(st.binary(min_size=32, max_size=32)),
        Key.OUT: draw(st.dictionaries(text_keys, values, max_size=5)),
    }
    if draw(st.booleans()):
        p[Key.LAT] = draw(st.integers(0, 10**9))
    return p


def result(**over: object) -> dict[int, object]:
    p: dict[int, object] = {
        0: 1, 1: "dev-01", 2: 1, 3: 5, 4: bytes(32), 5: 1, 6: 1, 7: "vib",
        8: bytes(32), 9: bytes(32), 10: {"label": "normal", "score": 0.5, "values": [0.5, 0.25]},
    }  # fmt: skip
    p.update({int(k.removeprefix("k")): v for k, v in over.items()})
    return p


@settings(max_examples=200, deadline=None)
@given(result_payloads())
def test_random_payloads_round_trip(payload: dict[int, object]) -> None:
    sealed = seal(payload, SIGNER, FLEET)
    opened = open_envelope(sealed.cose, FLEET, SIGNER.public_key)
    assert opened.payload == payload
    assert opened.msg_id == sealed.msg_id
    assert decode_unverified(sealed.cose).payload == payload


def test_every_single_bit_change_is_rejected() -> None:
    """Exhaustive over a valid result envelope: no single-bit change verifies."""
    cose = seal(result(), SIGNER, FLEET).cose
    for i in range(len(cose)):
        for bit in range(8):
            mutated = bytearray(cose)
            mutated[i] ^= 1 << bit
            with pytest.raises(EnvelopeError):
                open_envelope(bytes(mutated), FLEET, SIGNER.public_key)


@settings(max_examples=300, deadline=None)
@given(result_payloads(), st.data())
def test_single_bit_change_of_random_envelopes_is_rejected(
    payload: dict[int, object], data: st.DataObject
) -> None:
    cose = seal(payload, SIGNER, FLEET).cose
    i = data.draw(st.integers(0, len(cose) - 1))
    bit = data.draw(st.integers(0, 7))
    mutated = bytearray(cose)
    mutated[i] ^= 1 << bit
    with pytest.raises(EnvelopeError):
        open_envelope(bytes(mutated), FLEET, SIGNER.public_key)


def test_other_fleet_and_other_key() -> None:
    cose = seal(result(), SIGNER, FLEET).cose
    with pytest.raises(EnvelopeError) as e:
        open_envelope(cose, "other", SIGNER.public_key)
    assert e.value.verdict is Verdict.BAD_SIGNATURE
    with pytest.raises(EnvelopeError) as e:
        open_envelope(cose, FLEET, OTHER.public_key)
    assert e.value.verdict is Verdict.UNKNOWN_KEY
    ring = KeyRing.of([OTHER.public_key, SIGNER.public_key])
    assert open_envelope(cose, FLEET, ring).dev == "dev-01"


def test_too_large_checked_before_decoding() -> None:
    with pytest.raises(EnvelopeError) as e:
        open_envelope(b"\xd2" + bytes(MAX_ENVELOPE_BYTES), FLEET, SIGNER.public_key)
    assert e.value.verdict is Verdict.TOO_LARGE
    with pytest.raises(EnvelopeError) as e:
        seal(result(k10={"blob": bytes(MAX_ENVELOPE_BYTES)}), SIGNER, FLEET)
    assert e.value.verdict is Verdict.TOO_LARGE


def _resign(payload_bytes: bytes) -> bytes:
    """An envelope around arbitrary payload bytes, validly signed (to test payload strictness)."""
    protected = protected_header(SIGNER.kid)
    sig = SIGNER.sign(sig_structure(protected, FLEET, payload_bytes))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload_bytes, sig]))


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (result(k0=2), "v"),
        (result(k6=9), "kind"),
        (result(k1="Dev/01"), "dev"),
        (result(k4=bytes(31)), "prev"),
        (result(k3=-1), "seq"),
        (result(k18="ping"), "cmd in a result"),
        (result(k10={"x" * (MAX_TEXT_KEY_BYTES + 1): 1}), "long key"),
        (result(k10={1: 2}), "int key in nested map"),
        (result(k10={"a": float("inf")}), "inf"),
        ({k: v for k, v in result().items() if k != 9}, "missing input"),
        # docs/protocol.md §3 "Integers": -(2^53-1)..2^53-1 at any depth, 0..2^53-1 for the unsigned keys
        (result(k5=2**63), "t = 2^63 (past SQLite's INTEGER)"),
        (result(k5=UINT_MAX + 1), "t = 2^53"),
        (result(k2=2**64 - 1), "boot = 2^64-1"),
        (result(k3=UINT_MAX + 1), "seq = 2^53"),
        (result(k23=2**63), "lat = 2^63"),
        (result(k10={"n": INT_MAX + 1}), "nested 2^53"),
        (result(k10={"n": [INT_MIN - 1]}), "nested -2^53"),
        (result(k10={"n": -(2**64)}), "nested -2^64"),
    ],
)
def test_schema_violations_are_malformed_even_when_signed(payload: dict[int, object], why: str) -> None:
    raw = cbor2.dumps(payload, canonical=True)
    with pytest.raises(EnvelopeError) as e:
        open_envelope(_resign(raw), FLEET, SIGNER.public_key)
    assert e.value.verdict is Verdict.MALFORMED, why
    with pytest.raises(EnvelopeError):
        seal(payload, SIGNER, FLEET)


def test_integer_range_ends_are_accepted() -> None:
    p = result(k2=UINT_MAX, k3=UINT_MAX, k5=UINT_MAX, k23=UINT_MAX, k10={"a": INT_MAX, "b": [INT_MIN]})
    opened = open_envelope(seal(p, SIGNER, FLEET).cose, FLEET, SIGNER.public_key)
    assert opened.payload[Key.T] == UINT_MAX
    assert opened.payload[Key.OUT] == {"a": INT_MAX, "b": [INT_MIN]}


def test_nesting_limit() -> None:
    deep: object = 1
    for _ in range(MAX_DEPTH):
        deep = [deep]
    # the out map itself is level 1: MAX_DEPTH lists below it exceed the limit by one
    with pytest.raises(EnvelopeError) as e:
        seal(result(k10={"d": deep}), SIGNER, FLEET)
    assert e.value.verdict is Verdict.MALFORMED
    ok: object = 1
    for _ in range(MAX_DEPTH - 2):
        ok = [ok]
    seal(result(k10={"d": ok}), SIGNER, FLEET)


def test_tags_inside_payload_are_malformed() -> None:
    p = result()
    raw = cbor2.dumps({**p, 10: {"t": cbor2.CBORTag(2, b"\x01")}}, canonical=True)
    with pytest.raises(EnvelopeError) as e:
        open_envelope(_resign(raw), FLEET, SIGNER.public_key)
    assert e.value.verdict is Verdict.MALFORMED


def test_trailing_bytes_are_malformed() -> None:
    cose = seal(result(), SIGNER, FLEET).cose
    with pytest.raises(EnvelopeError) as e:
        open_envelope(cose + b"\x00", FLEET, SIGNER.public_key)
    assert e.value.verdict is Verdict.MALFORMED


def test_non_minimal_length_is_malformed() -> None:
    cose = seal(result(), SIGNER, FLEET).cose
    # protected header length 21 written as 0x58 0x15 instead of 0x55
    mutated = cose[:2] + b"\x58\x15" + cose[3:]
    with pytest.raises(EnvelopeError) as e:
        open_envelope(mutated, FLEET, SIGNER.public_key)
    assert e.value.verdict is Verdict.MALFORMED


@settings(max_examples=300, deadline=None)
@given(result_payloads())
def test_fast_canonical_check_agrees_with_reencoding(payload: dict[int, object]) -> None:
    """The length-based canonical check decides exactly as a byte comparison with cbor2's encoding."""
    canonical = cbor2.dumps({int(k): v for k, v in payload.items()}, canonical=True)
    decode_payload(canonical)  # canonical bytes pass
    wide = cbor2.dumps({int(k): v for k, v in sorted(payload.items())})  # floats as 9-byte doubles
    reversed_keys = cbor2.dumps(dict(reversed(list(payload.items()))))
    for candidate in (wide, reversed_keys):
        if candidate == canonical:
            decode_payload(candidate)
        else:
            with pytest.raises(EnvelopeError) as e:
                decode_payload(candidate)
            assert e.value.verdict is Verdict.MALFORMED
