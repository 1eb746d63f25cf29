"""The fast paths of seal and open decide exactly as the plain definitions (docs/protocol.md §3).

Sealing must give ``cbor2.dumps(payload, canonical=True)`` byte for byte; opening must accept a payload
exactly when it is strict CBOR of the schema and equal to its own canonical re-encoding. Both are
checked here against those definitions over generated payloads of every kind, and over generated
non-canonical encodings of them (wider heads and floats, other key orders, tags).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import cbor2
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_protocol.envelope import (
    MAX_ENVELOPE_BYTES,
    EnvelopeError,
    Verdict,
    _parse,
    _split,
    _strict_loads,
    decode_payload,
    encode_payload,
    open_envelope,
    protected_header,
    seal,
    sig_structure,
)
from edge_protocol.keys import SIGNATURE_LEN, Signer, Verifier
from edge_protocol.payload import (
    INT_MAX,
    INT_MIN,
    MAX_TEXT_KEY_BYTES,
    SCHEMA,
    UINT_MAX,
    Key,
    Kind,
    SchemaError,
    check_payload,
    float_savings,
    scan_payload,
)

SIGNER = Signer.from_seed(bytes(range(32)))
FLEET = "demo"

# Floats at every width boundary: zeros, half/single/double subnormals and extremes, values that
# round to infinity at a narrower width, and values one ulp off a narrower width.
SPECIAL_FLOATS = [
    0.0, -0.0, 1.0, -1.5, 0.1, 1 / 3, 0.9375, 0.03125,
    5.960464477539063e-08, -5.960464477539063e-08, 6.097555160522461e-05, 6.103515625e-05,
    65504.0, 65505.0, 65519.99, 65520.0, 65536.0, 1e-45, 1.401298464324817e-45, 1.1754942106924411e-38,
    1.1754943508222875e-38, 3.4028234663852886e38, 3.4028235677973366e38, 5e-324, 2.2250738585072014e-308,
    1.7976931348623157e308, 1.0000000000000002, 1.00048828125, 1.000000059604645,
]  # fmt: skip
floats = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(width=32, allow_nan=False, allow_infinity=False)
    | st.floats(width=16, allow_nan=False, allow_infinity=False)
    | st.sampled_from(SPECIAL_FLOATS)
)
ints = st.integers(INT_MIN, INT_MAX) | st.sampled_from(
    [0, 23, 24, 255, 256, 65535, 65536, 2**32, -1, -25, INT_MAX, INT_MIN]
)
text_keys = (
    st.text(alphabet="ab", max_size=2)  # few keys, so maps often hold keys of one length in either order
    | st.text(max_size=12).filter(lambda k: len(k.encode("utf-8")) <= MAX_TEXT_KEY_BYTES)
    | st.sampled_from(["a", "b", "é", "z" * 23, "y" * 24, "x" * 63])
)
leaves = ints | floats | st.text(max_size=20) | st.binary(max_size=40) | st.booleans() | st.none()
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text_keys, inner, max_size=4),
    max_leaves=24,
)
maps = st.dictionaries(text_keys, values, max_size=5)
ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)

_UINT_KEYS = {Key.BOOT, Key.SEQ, Key.T, Key.EXP, Key.LAT}
_B32_KEYS = {Key.PREV, Key.MODEL, Key.INPUT, Key.CFG, Key.SRC, Key.KEY, Key.CLAIM}
_MAP_KEYS = {Key.OUT, Key.INFO, Key.METRICS, Key.GAP, Key.ARGS, Key.REPLY}


def _strategy(key: Key, kind: Kind) -> st.SearchStrategy[Any]:
    if key == Key.V:
        return st.just(1)
    if key == Key.KIND:
        return st.just(int(kind))
    if key in _UINT_KEYS:
        return st.integers(0, UINT_MAX) | st.sampled_from([0, 23, 24, 255, 256, 2**32, UINT_MAX])
    if key in _B32_KEYS:
        return st.binary(min_size=32, max_size=32)
    if key == Key.ID:
        return st.binary(min_size=16, max_size=16)
    if key in (Key.DEV, Key.PIPE):
        return ids
    if key == Key.CMD:
        return st.text(min_size=1, max_size=63)
    assert key in _MAP_KEYS
    return maps


def canonical_order(value: Any) -> Any:
    """``value`` with every nested map's keys in canonical order (RFC 8949 §4.2.1, text keys)."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: (len(kv[0].encode("utf-8")), kv[0].encode("utf-8")))
        return {k: canonical_order(v) for k, v in items}
    if isinstance(value, list):
        return [canonical_order(v) for v in value]
    return value


@st.composite
def payloads(draw: st.DrawFn) -> dict[Any, Any]:
    """A payload of any kind, often in canonical order throughout, sometimes not; keys int or Key."""
    kind = draw(st.sampled_from(list(Kind)))
    required, optional = SCHEMA[kind]
    keys = sorted({Key.V, Key.DEV, Key.T, Key.KIND} | required | {k for k in optional if draw(st.booleans())})
    items = [(k, draw(_strategy(k, kind))) for k in keys]
    if draw(st.booleans()):
        items = [(k, canonical_order(v)) for k, v in items]
    if draw(st.integers(0, 3)) == 0:
        items = draw(st.permutations(items))
    as_enum = draw(st.booleans())
    return {(k if as_enum else int(k)): v for k, v in items}


@settings(max_examples=600, deadline=None)
@given(payloads())
def test_encode_payload_is_cbor2_canonical(payload: dict[Any, Any]) -> None:
    plain = {int(k): v for k, v in payload.items()}
    try:
        check_payload(plain)
    except SchemaError:  # deeper than MAX_DEPTH: refused on both sides
        with pytest.raises(EnvelopeError) as e:
            encode_payload(payload)
        assert e.value.verdict is Verdict.MALFORMED
        return
    assert encode_payload(payload) == cbor2.dumps(plain, canonical=True)


@pytest.mark.parametrize("x", SPECIAL_FLOATS)
def test_float_savings_is_cbor2_canonical_width(x: float) -> None:
    assert 9 - float_savings(x) == len(cbor2.dumps(x, canonical=True))


@pytest.mark.parametrize(
    "out",
    [
        {"b": 1, "a": 2},
        {"ab": 1, "b": 2},
        {"l": [{"b": 1, "a": 2}, {}]},
        {"l": [{"b": 1, "a": 2}, [0.5]]},
        {"a": {"b": 1, "a": 2}, "b": {"c": 0.5}},
        {"a": [[{"y": 1, "x": 2}]], "b": {}},
    ],
)
def test_scan_reports_any_unsorted_map(out: dict[str, Any]) -> None:
    assert scan_payload(_result(out))[1] is None
    assert scan_payload(_result(canonical_order(out)))[1] is not None
    assert encode_payload(_result(out)) == cbor2.dumps(_result(out), canonical=True)


def test_unsorted_top_level_and_surrogates_take_the_slow_path() -> None:
    p = {6: 5, 0: 1, 1: "dev-01", 2: 1, 3: 2, 5: 3}
    assert encode_payload(p) == cbor2.dumps(p, canonical=True)
    with pytest.raises(EnvelopeError) as e:
        encode_payload({0: 1, 1: "d", 2: 1, 3: 2, 4: bytes(32), 5: 3, 6: 2, 16: {"a": "\ud800"}})
    assert e.value.verdict is Verdict.MALFORMED


def test_mixed_plain_and_enum_keys_seal_like_plain_keys() -> None:
    p: dict[Any, Any] = {0: 1, Key.DEV: "dev-01", 2: 1, Key.SEQ: 2, 5: 3, 6: int(Kind.ACK)}
    assert encode_payload(p) == cbor2.dumps({int(k): v for k, v in p.items()}, canonical=True)


# --- open: a generated, possibly non-canonical encoding is accepted exactly when it is canonical ---

_F16 = struct.Struct(">e")
_F32 = struct.Struct(">f")


def _head(major: int, n: int, extra: int) -> bytes:
    """A head of major type ``major`` for ``n``, ``extra`` widths wider than the shortest."""
    widths = [w for w, limit in ((0, 24), (1, 0x100), (2, 0x10000), (4, 2**32), (8, 2**64)) if n < limit]
    width = widths[min(extra, len(widths) - 1)]
    if width == 0:
        return bytes([major << 5 | n])
    return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[width]]) + n.to_bytes(width, "big")


def _float(x: float, extra: int) -> bytes:
    forms = []
    for lead, fmt in ((0xF9, _F16), (0xFA, _F32)):
        try:
            if fmt.unpack(fmt.pack(x))[0] == x:
                forms.append(bytes([lead]) + fmt.pack(x))
        except OverflowError:
            pass
    forms.append(b"\xfb" + struct.pack(">d", x))
    return forms[min(extra, len(forms) - 1)]


def encode(value: Any, draw: Callable[[], int]) -> bytes:
    """CBOR of ``value`` where ``draw()`` picks, item by item, how far to stray from the canonical form:
    0 is canonical; otherwise a wider head or float, another key order, or a tag around the item."""
    choice = draw()
    if choice == 7:  # a tag that decodes to the item itself: 28 (shareable) or 55799 (self-described)
        return (b"\xd8\x1c", b"\xd9\xd9\xf7")[draw() % 2] + encode(value, draw)
    extra = choice if choice < 4 else 0
    t = type(value)
    if value is None:
        return b"\xf6"
    if t is bool:
        return b"\xf5" if value else b"\xf4"
    if t is int:
        if choice == 6 and value >= 0:  # bignum (tag 2), which cbor2 would decode to the same int
            raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
            return b"\xc2" + _head(2, len(raw), 0) + raw
        return _head(0, value, extra) if value >= 0 else _head(1, -1 - value, extra)
    if t is float:
        return _float(value, extra)
    if t is str:
        raw = value.encode("utf-8")
        return _head(3, len(raw), extra) + raw
    if t is bytes:
        return _head(2, len(value), extra) + value
    if t is list:
        return _head(4, len(value), extra) + b"".join(encode(v, draw) for v in value)
    items = list(value.items())
    if choice == 5:  # another key order
        items = items[1:] + items[:1]
    return _head(5, len(items), extra) + b"".join(encode(k, draw) + encode(v, draw) for k, v in items)


def reference_accepts(payload_bytes: bytes) -> bool:
    """docs/protocol.md §3 literally: strict CBOR, the schema, and equal to its own canonical re-encoding."""
    try:
        value = cbor2.loads(payload_bytes, allow_duplicate_keys=False, allow_indefinite=False, max_depth=32)
        check_payload(value)
        return bool(cbor2.dumps(value, canonical=True) == payload_bytes)
    except Exception:
        return False


def accepts(payload_bytes: bytes) -> bool:
    """Whether decode_payload accepts; a refusal is always MALFORMED."""
    try:
        decode_payload(payload_bytes)
    except EnvelopeError as e:
        verdict = e.verdict
    else:
        return True
    assert verdict is Verdict.MALFORMED
    return False


@settings(max_examples=600, deadline=None)
@given(payloads(), st.data())
def test_decode_accepts_exactly_canonical_encodings(payload: dict[Any, Any], data: st.DataObject) -> None:
    plain = {int(k): v for k, v in payload.items()}
    rate = data.draw(st.sampled_from([0, 2, 8, 30]))  # how often an item strays: never .. always

    def draw() -> int:
        if rate == 0 or data.draw(st.integers(0, 99)) >= rate:
            return 0
        return data.draw(st.integers(1, 7))

    payload_bytes = encode(plain, draw)
    if data.draw(st.integers(0, 9)) == 0:  # trailing bytes, which cbor2's decoder itself ignores
        payload_bytes += data.draw(st.binary(min_size=1, max_size=3))
    assert accepts(payload_bytes) == reference_accepts(payload_bytes)


def _resigned_bytes(payload: dict[int, Any], old: bytes, new: bytes) -> bytes:
    canonical = cbor2.dumps(payload, canonical=True)
    assert canonical.count(old) == 1
    return canonical.replace(old, new)


def _result(out: dict[str, Any], **extra: Any) -> dict[int, Any]:
    p = {
        0: 1,
        1: "dev-01",
        2: 1,
        3: 5,
        4: bytes(32),
        5: 1,
        6: 1,
        7: "vib",
        8: bytes(32),
        9: bytes(32),
        10: out,
    }
    p.update({int(k.removeprefix("k")): v for k, v in extra.items()})
    return p


def _open_resigned(payload_bytes: bytes) -> None:
    protected = protected_header(SIGNER.kid)
    sig = SIGNER.sign(sig_structure(protected, FLEET, payload_bytes))
    open_envelope(
        cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload_bytes, sig])), FLEET, SIGNER.public_key
    )


def test_shared_value_padded_to_canonical_length_is_malformed() -> None:
    """Value sharing (tags 28/29) makes an encoding shorter; a wider integer makes it as long again.

    The length check alone accepted this; refusing the tags while decoding closes it."""
    text = cbor2.dumps("a" * 10)
    p = _result({"s": "a" * 10, "label": "a" * 10}, k23=1234)
    out = b"\x61s" + text + b"\x65label" + text
    shared_out = b"\x61s\xd8\x1c" + text + b"\x65label\xd8\x1d\x00"  # 28(text), then 29(0): 6 bytes less
    payload_bytes = _resigned_bytes(p, out, shared_out)
    payload_bytes = payload_bytes.replace(
        b"\x17\x19\x04\xd2", b"\x17\x1b" + (1234).to_bytes(8, "big")
    )  # 6 more
    assert len(payload_bytes) == len(cbor2.dumps(p, canonical=True))
    assert cbor2.loads(payload_bytes) == p  # cbor2 itself decodes it to the very same value
    with pytest.raises(EnvelopeError) as e:
        _open_resigned(payload_bytes)
    assert e.value.verdict is Verdict.MALFORMED


def test_string_reference_is_malformed() -> None:
    text = cbor2.dumps("a" * 10)
    p = _result({"label": "a" * 10, "values": ["a" * 10]})
    # 256(...) opens a string namespace; 25(6) is the seventh string of 3+ bytes in it, "aaaaaaaaaa"
    payload_bytes = b"\xd9\x01\x00" + _resigned_bytes(p, b"\x81" + text, b"\x81\xd8\x19\x06")
    assert cbor2.loads(payload_bytes) == p
    with pytest.raises(EnvelopeError) as e:
        _open_resigned(payload_bytes)
    assert e.value.verdict is Verdict.MALFORMED


def test_unsorted_inner_map_padded_by_one_byte_is_malformed() -> None:
    """An unsorted map inside a sorted one used to count as -1 saved byte; one wider head matched it."""
    p = _result({"a": {"z": 1, "b": 2}, "b": 0.5, "c": 5})
    payload_bytes = _resigned_bytes(p, b"\xa2\x61b\x02\x61z\x01", b"\xa2\x61z\x01\x61b\x02")
    payload_bytes = payload_bytes.replace(b"\x61c\x05", b"\x61c\x18\x05")
    assert len(payload_bytes) == len(cbor2.dumps(p, canonical=True)) + 1
    with pytest.raises(EnvelopeError) as e:
        _open_resigned(payload_bytes)
    assert e.value.verdict is Verdict.MALFORMED


def test_values_after_an_unsorted_inner_map_are_still_checked() -> None:
    with pytest.raises(EnvelopeError) as e:
        seal(_result({"l": [{"b": 1, "a": 2}, float("nan")]}), SIGNER, FLEET)
    assert e.value.verdict is Verdict.MALFORMED


_TAG_CONTENTS = [b"\x00", b"\x20", b"\x41\x01", b"\x61a", b"\x81\x00", b"\xa0", b"\xf9\x3c\x00", b"\xc1\x00"]


def test_no_tag_decodes_to_a_value() -> None:
    """Every tag number up to 65535 (and a sample beyond) is refused or stays a CBORTag, which the
    schema refuses: a payload carries no tags, and the canonical length argument relies on that."""
    for number in [*range(0x10000), 2**16, 2**20, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1]:
        head = cbor2.dumps(cbor2.CBORTag(number, None))[:-1]
        for content in _TAG_CONTENTS:
            try:
                value = _strict_loads(head + content)
            except Exception:
                continue
            assert isinstance(value, cbor2.CBORTag), (number, content, value)


# --- the envelope split: the fast path returns what the parser returns, or leaves it to the parser ---


def _outcome(split: Callable[[bytes], tuple[bytes, bytes, bytes]], cose: bytes) -> object:
    try:
        return split(cose)
    except EnvelopeError as e:
        return (e.verdict, e.reason)


payload_sizes = st.integers(0, 300) | st.integers(65_300, MAX_ENVELOPE_BYTES - 91)


@settings(max_examples=400, deadline=None)
@given(payload_sizes, st.binary(min_size=16, max_size=16), st.data())
def test_split_agrees_with_the_parser(size: int, kid: bytes, data: st.DataObject) -> None:
    payload = bytes([size % 251]) * size
    header = cbor2.dumps(payload)[: -size or None]
    if data.draw(st.booleans()) and size < 0x10000:  # a wider payload length header
        header = (b"\x59" + size.to_bytes(2, "big")) if size < 0x100 else (b"\x5a" + size.to_bytes(4, "big"))
    cose = bytearray(
        b"\xd2\x84\x55" + protected_header(kid) + b"\xa0" + header + payload + b"\x58\x40" + bytes(64)
    )
    action = data.draw(st.sampled_from(["none", "flip", "cut", "append", "set"]))
    if action == "flip" and cose:
        i = data.draw(st.integers(0, min(len(cose) - 1, 40)) | st.integers(0, len(cose) - 1))
        cose[i] ^= 1 << data.draw(st.integers(0, 7))
    elif action == "cut":
        del cose[data.draw(st.integers(0, len(cose))) :]
    elif action == "append":
        cose += data.draw(st.binary(min_size=1, max_size=3))
    elif action == "set":
        cose[data.draw(st.integers(0, len(cose) - 1))] = data.draw(
            st.sampled_from([0x40, 0x57, 0x58, 0x59, 0xA0])
        )
    raw = bytes(cose)
    if len(raw) > MAX_ENVELOPE_BYTES:
        return
    assert _outcome(_split, raw) == _outcome(_parse, raw)
    if action == "none" and len(header) == len(cbor2.dumps(payload)) - size:
        assert _split(raw) == (raw[3:24], payload, bytes(64))


# --- Signer and Verifier against PyNaCl's object API ---


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400), st.binary(min_size=32, max_size=32))
def test_signer_and_verifier_match_pynacl(message: bytes, seed: bytes) -> None:
    signer = Signer.from_seed(seed)
    key = nacl.signing.SigningKey(seed)
    signature = signer.sign(message)
    assert signature == key.sign(message).signature
    assert len(signature) == SIGNATURE_LEN
    verifier = Verifier(signer.public_key)
    assert verifier.verify(message, signature)
    assert not verifier.verify(message + b"\x00", signature)
    assert not verifier.verify(message, signature[:63])
    assert not verifier.verify(message, bytearray(signature))  # type: ignore[arg-type]
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verifier.verify(message, flipped)


def test_verifier_refuses_malleated_signature() -> None:
    """S + L (RFC 8032 §5.1.7: S must be below L) verifies in a lax implementation, never here."""
    order = 2**252 + 27742317777372353535851937790883648493
    message = b"edgeseal"
    signature = SIGNER.sign(message)
    s = int.from_bytes(signature[32:], "little") + order
    assert s < 2**256
    malleated = signature[:32] + s.to_bytes(32, "little")
    assert not Verifier(SIGNER.public_key).verify(message, malleated)
