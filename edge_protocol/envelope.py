"""The signed envelope, wire format v1 (docs/protocol.md §2): a tagged COSE_Sign1 (RFC 9052) with Ed25519.

Bytes on the wire::

    d2                      tag 18 (COSE_Sign1)
    84                      array(4)
    55 a2 01 32 04 50 <kid> protected: bstr(21) = {1: -19, 4: kid16}, canonical
    a0                      unprotected: {}
    58/59 <len> <payload>   payload: bstr, canonical CBOR of the integer-keyed map
    58 40 <signature>       Ed25519 over Sig_structure = ["Signature1", protected, external_aad, payload]

Opening a message follows these steps, in this order, so that no attacker-controlled payload is parsed
before its signature is known to be good:

1. size: more than :data:`MAX_ENVELOPE_BYTES` is TOO_LARGE, checked before any decoding;
2. structure: exactly the bytes above (tag, array, the one allowed protected header, an empty
   unprotected map, definite minimal lengths, a 64-byte signature, nothing after); else MALFORMED;
3. key: the kid names a key the caller knows; else UNKNOWN_KEY;
4. signature: Ed25519 (RFC 8032, S < L enforced by libsodium) over the Sig_structure with the fleet's
   external_aad; else BAD_SIGNATURE;
5. payload: strict CBOR (no duplicate keys, no indefinite lengths, no tags), equal to its own
   canonical re-encoding, and of the schema of its kind (:mod:`edge_protocol.payload`); else MALFORMED.
"""

from __future__ import annotations

import enum
import functools
import itertools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, NoReturn

import cbor2

from edge_protocol.errors import ProtocolError
from edge_protocol.keys import KID_LEN, SIGNATURE_LEN, Signer, Verifier, key_id, message_id
from edge_protocol.payload import MAP_KEYS, Key, Kind, SchemaError, float_savings, scan_payload

# docs/protocol.md §2: an envelope is at most 64 KiB; larger is TOO_LARGE before any decoding.
MAX_ENVELOPE_BYTES = 64 * 1024
# cbor2's own recursion guard; the schema's MAX_DEPTH (16) is checked on the decoded value.
_CBOR_MAX_DEPTH = 32
_ALG_EDDSA_ED25519 = -19  # RFC 9864 "Ed25519"
_PROTECTED_PREFIX = bytes.fromhex("a2013204") + bytes([0x40 | KID_LEN])  # {1: -19, 4: bstr(16)}
_PROTECTED_LEN = len(_PROTECTED_PREFIX) + KID_LEN
_TAG18_ARRAY4 = b"\xd2\x84"
_SIG_HEADER = b"\x58\x40"  # bstr(64)
_SIG1_CONTEXT = b"\x84\x6aSignature1"  # array(4), tstr(10) "Signature1"
# An envelope starts with these bytes and the kid, then the empty unprotected map at _PAYLOAD_AT - 1.
_COSE_HEAD = _TAG18_ARRAY4 + bytes([0x40 | _PROTECTED_LEN]) + _PROTECTED_PREFIX
_PROTECTED_AT = len(_TAG18_ARRAY4) + 1
_KID_AT = len(_PROTECTED_PREFIX)  # offset of the kid inside the protected header
_PAYLOAD_AT = len(_COSE_HEAD) + KID_LEN + 1


class Verdict(str, enum.Enum):
    """What a verifier decides about a message (docs/protocol.md §4, §6)."""

    ACCEPTED = "ACCEPTED"
    DUPLICATE = "DUPLICATE"
    EQUIVOCATION = "EQUIVOCATION"
    FORK = "FORK"
    GAP = "GAP"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    UNKNOWN_DEVICE = "UNKNOWN_DEVICE"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    REVOKED = "REVOKED"
    CLAIM_INVALID = "CLAIM_INVALID"
    TOPIC_MISMATCH = "TOPIC_MISMATCH"
    MALFORMED = "MALFORMED"
    TOO_LARGE = "TOO_LARGE"

    def __str__(self) -> str:
        return self.value


class EnvelopeError(ProtocolError):
    """A message was rejected; ``verdict`` says how and ``reason`` says why, in words."""

    def __init__(self, verdict: Verdict, reason: str) -> None:
        super().__init__(f"{verdict.value}: {reason}")
        self.verdict = verdict
        self.reason = reason


class Sealed(NamedTuple):
    """A sealed envelope: the bytes to send, its ``msg_id`` and the payload bytes inside.

    Immutable; a named tuple rather than a frozen dataclass because one is built per message and a
    tuple is several times cheaper to build.
    """

    cose: bytes
    msg_id: bytes
    payload_bytes: bytes


class Opened(NamedTuple):
    """A decoded (and, from :func:`open_envelope`, verified) envelope. Immutable, like :class:`Sealed`."""

    payload: dict[int, Any]
    payload_bytes: bytes
    msg_id: bytes
    kid: bytes
    signature: bytes
    kind: Kind

    @property
    def dev(self) -> str:
        return str(self.payload[Key.DEV])

    @property
    def boot(self) -> int | None:
        v = self.payload.get(Key.BOOT)
        return int(v) if v is not None else None

    @property
    def seq(self) -> int | None:
        v = self.payload.get(Key.SEQ)
        return int(v) if v is not None else None

    @property
    def prev(self) -> bytes | None:
        v = self.payload.get(Key.PREV)
        return bytes(v) if v is not None else None

    @property
    def t(self) -> int:
        return int(self.payload[Key.T])


def external_aad(fleet: str) -> bytes:
    """docs/protocol.md §2: ``"edgeseal:v1:" + fleet_id``; binds every signature to one fleet."""
    return ("edgeseal:v1:" + fleet).encode("utf-8")


def _head(major: int, n: int) -> bytes:
    """The minimal CBOR head of major type ``major`` with argument ``n`` (RFC 8949 §3.1, §4.2.1)."""
    if n < 24:
        return bytes([major << 5 | n])
    if n < 0x100:
        return bytes([major << 5 | 24, n])
    if n < 0x10000:
        return bytes([major << 5 | 25, n >> 8, n & 0xFF])
    return bytes([major << 5 | 26]) + n.to_bytes(4, "big")


_SHORT_BSTR_HEADERS = tuple(_head(2, n) for n in range(0x100))
_SMALL_MAP_HEADS = tuple(_head(5, n) for n in range(12))


def _bstr_header(n: int) -> bytes:
    """The minimal CBOR header of a byte string of length ``n`` (short ones from a table)."""
    return _SHORT_BSTR_HEADERS[n] if 0 <= n < 0x100 else _head(2, n)


def _bstr(data: bytes) -> bytes:
    return _bstr_header(len(data)) + data


@functools.lru_cache(maxsize=64)
def _sig_prefix(protected: bytes, fleet: str) -> bytes:
    """The Sig_structure up to the payload's header; it depends only on the key and the fleet."""
    return b"".join((_SIG1_CONTEXT, _bstr(protected), _bstr(external_aad(fleet))))


def sig_structure(protected: bytes, fleet: str, payload_bytes: bytes) -> bytes:
    """Canonical CBOR of ``["Signature1", protected, external_aad, payload]`` (RFC 9052 §4.4)."""
    return b"".join((_sig_prefix(protected, fleet), _bstr_header(len(payload_bytes)), payload_bytes))


def protected_header(kid: bytes) -> bytes:
    return _PROTECTED_PREFIX + kid


class _Encoded:
    """Bytes that are already the canonical CBOR of one value; :func:`_write_encoded` copies them out."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _write_encoded(encoder: cbor2.CBOREncoder, value: object) -> None:
    if not isinstance(value, _Encoded):
        raise cbor2.CBOREncodeTypeError(f"cannot encode type {type(value).__name__}")
    encoder.write(value.data)


def _encode_sorted_map(value: dict[str, Any]) -> bytes:
    """Canonical CBOR of a map whose keys are already in canonical order.

    cbor2's canonical mode sorts a map's keys by encoding each of them apart, which costs more than
    all the rest. Keys already in order need no sorting: the map's encoding is then its head followed
    by exactly the items of the flat array ``[k1, v1, k2, v2, ...]``, which canonical mode encodes
    without sorting anything at this level (and still gives every float its shortest width).
    """
    n = len(value)
    flat = cbor2.dumps(list(itertools.chain.from_iterable(value.items())), canonical=True)
    if 2 * n < 24:  # both heads are one byte
        return _SMALL_MAP_HEADS[n] + flat[1:]
    return _head(5, n) + flat[len(_head(4, 2 * n)) :]


def _encode_in_order(plain: dict[int, Any], floats: list[float]) -> bytes:
    """Canonical CBOR of a checked payload whose maps are all in canonical key order (fast path).

    With every key in order, plain and canonical encoding differ only in float widths. When no float
    is shorter than a double they are the same bytes; otherwise the nested maps are encoded
    canonically on their own and written into the plain encoding of the top-level map.
    """
    if not any(map(float_savings, floats)):
        return cbor2.dumps(plain)
    spliced = dict(plain)
    for k in MAP_KEYS:
        v = plain.get(k)
        if v is not None:
            spliced[k] = _Encoded(_encode_sorted_map(v))
    return cbor2.dumps(spliced, default=_write_encoded)


_ENCODE_ERRORS = (SchemaError, cbor2.CBOREncodeError, TypeError, ValueError)


def _encode_checked(plain: dict[int, Any]) -> bytes:
    """Check ``plain`` (plain int keys) against the schema and return its canonical CBOR."""
    _, floats = scan_payload(plain)
    encoded = None
    if floats is not None:
        try:
            encoded = _encode_in_order(plain, floats)
        except Exception:  # a lone surrogate in a text, say: canonical mode below words the error
            encoded = None
    return encoded if encoded is not None else bytes(cbor2.dumps(plain, canonical=True))


def _encode_or_none(plain: dict[int, Any]) -> bytes | None:
    try:
        return _encode_checked(plain)
    except _ENCODE_ERRORS:
        return None


def encode_payload(payload: Mapping[int, object]) -> bytes:
    """Check ``payload`` (docs/protocol.md §3) and return its canonical CBOR; raise EnvelopeError(MALFORMED).

    The result is always ``cbor2.dumps(payload, canonical=True)`` of the payload with plain int keys.
    The schema check tells on the way whether every map is already in canonical order, and then a
    cheaper encoding gives the same bytes (see :func:`_encode_in_order`; a property test compares
    the two). A dict whose keys are plain ints already is used as it is rather than copied: when its
    first key is one, it is tried directly, and if the schema refuses it (another key is ``Key.T``,
    say) the copy decides, with the error it gives.
    """
    if type(payload) is dict and payload and type(next(iter(payload))) is int:
        encoded = _encode_or_none(payload)
        if encoded is not None:
            return encoded
    plain = {int(k): v for k, v in payload.items()}
    try:
        return _encode_checked(plain)
    except _ENCODE_ERRORS as e:
        raise EnvelopeError(Verdict.MALFORMED, f"cannot seal: {e}") from e


def seal(payload: Mapping[int, object], signer: Signer, fleet: str) -> Sealed:
    """Encode, sign and wrap a payload; the result verifies with :func:`open_envelope`."""
    payload_bytes = encode_payload(payload)
    protected = _PROTECTED_PREFIX + signer.kid
    payload_head = _bstr_header(len(payload_bytes))
    signature = signer.sign(b"".join((_sig_prefix(protected, fleet), payload_head, payload_bytes)))
    cose = b"".join((_COSE_HEAD, signer.kid, b"\xa0", payload_head, payload_bytes, _SIG_HEADER, signature))
    if len(cose) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(Verdict.TOO_LARGE, f"envelope of {len(cose)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    return Sealed(cose, message_id(payload_bytes), payload_bytes)


def _read_bstr(buf: bytes, pos: int) -> tuple[bytes, int]:
    """Read a definite, minimally encoded byte string at ``pos``; return it and the next position."""
    if pos >= len(buf):
        raise EnvelopeError(Verdict.MALFORMED, "truncated envelope")
    head = buf[pos]
    if head >> 5 != 2:
        raise EnvelopeError(Verdict.MALFORMED, f"expected a byte string at offset {pos}")
    info = head & 0x1F
    pos += 1
    if info < 24:
        n = info
    elif info in (24, 25, 26):
        width = 1 << (info - 24)
        if pos + width > len(buf):
            raise EnvelopeError(Verdict.MALFORMED, "truncated envelope")
        n = int.from_bytes(buf[pos : pos + width], "big")
        pos += width
        if _bstr_header(n)[0] != head:
            raise EnvelopeError(Verdict.MALFORMED, "byte string length not in its shortest form")
    else:  # 27: 8-byte lengths cannot fit under the size limit; 31: indefinite; 28-30 reserved
        raise EnvelopeError(Verdict.MALFORMED, "indefinite or oversized byte string length")
    end = pos + n
    if end > len(buf):
        raise EnvelopeError(Verdict.MALFORMED, "truncated envelope")
    return buf[pos:end], end


def _read_headers(cose: bytes) -> tuple[bytes, int]:
    """Check tag, array, protected and unprotected headers; return the protected bytes and the next offset."""
    if not cose:
        raise EnvelopeError(Verdict.MALFORMED, "empty message")
    if cose[:2] != _TAG18_ARRAY4:
        if cose[:1] == b"\x84":
            raise EnvelopeError(Verdict.MALFORMED, "missing COSE_Sign1 tag 18")
        if cose[:1] == b"\xd2":
            raise EnvelopeError(Verdict.MALFORMED, "tag 18 must hold an array of 4")
        raise EnvelopeError(Verdict.MALFORMED, "not a COSE_Sign1 (tag 18) envelope")
    protected, pos = _read_bstr(cose, 2)
    if len(protected) != _PROTECTED_LEN or not protected.startswith(_PROTECTED_PREFIX):
        raise EnvelopeError(
            Verdict.MALFORMED, f"protected header must be exactly {{1: {_ALG_EDDSA_ED25519}, 4: kid16}}"
        )
    if cose[pos : pos + 1] != b"\xa0":
        raise EnvelopeError(Verdict.MALFORMED, "unprotected header must be the empty map")
    return protected, pos + 1


def _split(cose: bytes) -> tuple[bytes, bytes, bytes]:
    """Steps 1 and 2: the protected header, payload bytes and signature of a well-formed envelope."""
    size = len(cose)
    if size > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(Verdict.TOO_LARGE, f"envelope of {size} bytes exceeds {MAX_ENVELOPE_BYTES}")
    if cose.startswith(_COSE_HEAD) and cose[_PAYLOAD_AT - 1 : _PAYLOAD_AT] == b"\xa0":
        # The usual case, without parsing: the payload fills all between the headers and the signature,
        # so the envelope's size fixes the payload's length n. If the bytes there are n's shortest
        # header and the signature's header, the general path below would return just these slices.
        end = size - len(_SIG_HEADER) - SIGNATURE_LEN
        span = end - _PAYLOAD_AT  # header and payload
        width = 1 if span <= 24 else 2 if span <= 0x101 else 3  # 64 KiB needs no wider header
        n = span - width
        if (
            n >= 0
            and cose[_PAYLOAD_AT : _PAYLOAD_AT + width] == _bstr_header(n)
            and cose[end : end + len(_SIG_HEADER)] == _SIG_HEADER
        ):
            protected = cose[_PROTECTED_AT : _PAYLOAD_AT - 1]
            return protected, cose[_PAYLOAD_AT + width : end], cose[end + len(_SIG_HEADER) :]
    return _parse(cose)


def _parse(cose: bytes) -> tuple[bytes, bytes, bytes]:
    """:func:`_split` by reading the envelope item by item; it words what is wrong."""
    protected, pos = _read_headers(cose)
    payload_bytes, pos = _read_bstr(cose, pos)
    if cose[pos : pos + 2] != _SIG_HEADER:
        raise EnvelopeError(Verdict.MALFORMED, f"signature must be a {SIGNATURE_LEN}-byte string")
    signature = cose[pos + 2 : pos + 2 + SIGNATURE_LEN]
    end = pos + 2 + SIGNATURE_LEN
    if len(signature) != SIGNATURE_LEN:
        raise EnvelopeError(Verdict.MALFORMED, "truncated envelope")
    if end != len(cose):
        raise EnvelopeError(Verdict.MALFORMED, f"{len(cose) - end} bytes after the envelope")
    return protected, payload_bytes, signature


def _refuse_tag(*_: object) -> NoReturn:
    raise ValueError("tags are not allowed in the payload")


# Every tag cbor2 decodes by itself into a value, refused instead: a payload carries no tags
# (docs/protocol.md §3), and the length argument of _is_canonical needs it. Without this, tag 2 decodes
# to a plain int, and
# the value-sharing (28/29) and string-reference (25/256) tags to plain values *shorter* than their
# canonical encoding. Any other tag decodes to a CBORTag, which the schema refuses.
# tests/edge_protocol/test_canonical.py checks that no tag number up to 65535 gets past this table.
_NATIVE_TAGS = frozenset(
    {0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004, 43000, 55799}
)
_NO_TAGS: dict[int, Callable[..., NoReturn]] = dict.fromkeys(_NATIVE_TAGS, _refuse_tag)


def _strict_loads(data: bytes) -> Any:
    """cbor2's decoder, strict: no duplicate keys, no indefinite lengths, no tags decoded to values."""
    return cbor2.loads(
        data,
        allow_duplicate_keys=False,
        allow_indefinite=False,
        max_depth=_CBOR_MAX_DEPTH,
        semantic_decoders=_NO_TAGS,
    )


def _is_canonical(value: dict[int, Any], payload_bytes: bytes, floats: list[float] | None) -> bool:
    """True when ``payload_bytes`` is the canonical encoding of ``value`` (fast path of the check).

    ``floats`` is what :func:`scan_payload` returned: None unless every map, the top level included,
    is in canonical key order. Why the length then suffices: ``value`` was decoded from
    ``payload_bytes`` without indefinite lengths and without tags, so the bytes are one of its
    definite, untagged encodings, perhaps followed by more bytes (cbor2 ignores those). Every way
    to stray from the canonical encoding other than key order (a longer integer or length header, a
    wider float, bytes after the end) makes the bytes longer, and the canonical encoding is the
    unique shortest one. So with the keys in order, the bytes are canonical exactly when their length
    is the shortest possible: cbor2's plain encoding (minimal headers, every float a 9-byte double)
    minus what the shortest float widths save. (Tags must be refused for this: value sharing and
    string references decode to plain values but are shorter; see _NATIVE_TAGS.)
    """
    if floats is None:
        return False
    return len(cbor2.dumps(value)) - sum(map(float_savings, floats)) == len(payload_bytes)


def decode_payload(payload_bytes: bytes) -> tuple[dict[int, Any], Kind]:
    """Strictly decode payload bytes (step 5); raise EnvelopeError(MALFORMED) on any deviation."""
    try:
        value = _strict_loads(payload_bytes)
    except Exception as e:  # cbor2 raises CBORDecodeError, but also ValueError/TypeError on odd input
        why = f" ({e.__cause__})" if e.__cause__ is not None else ""  # e.g. that tags are not allowed
        raise EnvelopeError(Verdict.MALFORMED, f"payload is not valid CBOR: {e}{why}") from None
    if not isinstance(value, dict):
        raise EnvelopeError(Verdict.MALFORMED, "payload is not a map")
    try:
        kind, floats = scan_payload(value)
    except SchemaError as e:
        raise EnvelopeError(Verdict.MALFORMED, str(e)) from None
    if _is_canonical(value, payload_bytes, floats):
        return value, kind
    try:  # slow path: it decides the same, and words the error
        canonical = cbor2.dumps(value, canonical=True)
    except Exception as e:
        raise EnvelopeError(Verdict.MALFORMED, f"payload cannot be re-encoded: {e}") from None
    if canonical != payload_bytes:
        raise EnvelopeError(
            Verdict.MALFORMED, "payload is not in canonical form (key order, a width, or bytes after it)"
        )
    return value, kind


def decode_unverified(cose: bytes) -> Opened:
    """Decode strictly without checking the signature (for display and for routing by kid)."""
    protected, payload_bytes, signature = _split(bytes(cose))
    payload, kind = decode_payload(payload_bytes)
    return Opened(payload, payload_bytes, message_id(payload_bytes), protected[_KID_AT:], signature, kind)


KeySource = bytes | Verifier | Mapping[bytes, Verifier]


def _resolve(keys: KeySource, kid: bytes) -> Verifier | None:
    if isinstance(keys, Verifier):
        return keys if keys.kid == kid else None
    if isinstance(keys, (bytes, bytearray)):
        return Verifier(bytes(keys)) if key_id(bytes(keys)) == kid else None
    return keys.get(kid)


def open_envelope(cose: bytes, fleet: str, keys: KeySource) -> Opened:
    """Verify and decode an envelope; raise :class:`EnvelopeError` with the verdict on any failure.

    ``keys`` is one public key (bytes or a :class:`Verifier`, faster when reused) or a mapping from kid to
    :class:`Verifier` (see :class:`KeyRing`).
    """
    protected, payload_bytes, signature = _split(bytes(cose))
    kid = protected[_KID_AT:]
    verifier = _resolve(keys, kid)
    if verifier is None:
        raise EnvelopeError(Verdict.UNKNOWN_KEY, f"signed by unknown key id {kid.hex()}")
    if not verifier.verify(sig_structure(protected, fleet, payload_bytes), signature):
        raise EnvelopeError(Verdict.BAD_SIGNATURE, "signature does not verify for this fleet and key")
    payload, kind = decode_payload(payload_bytes)
    return Opened(payload, payload_bytes, message_id(payload_bytes), kid, signature, kind)


class KeyRing(dict[bytes, Verifier]):
    """kid -> Verifier, for callers that accept several signers (an agent's collector keys)."""

    @classmethod
    def of(cls, public_keys: list[bytes] | tuple[bytes, ...]) -> KeyRing:
        ring = cls()
        for pk in public_keys:
            ring.add(pk)
        return ring

    def add(self, public_key: bytes) -> Verifier:
        v = Verifier(public_key)
        self[v.kid] = v
        return v
