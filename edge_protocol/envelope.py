"""The signed envelope, wire format v1 (DESIGN §2): a tagged COSE_Sign1 (RFC 9052) with Ed25519.

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from edge_protocol.errors import ProtocolError
from edge_protocol.keys import KID_LEN, SIGNATURE_LEN, Signer, Verifier, key_id, message_id
from edge_protocol.payload import Key, Kind, SchemaError, check_payload, scan_payload

# DESIGN §2: an envelope is at most 64 KiB; larger is TOO_LARGE before any decoding.
MAX_ENVELOPE_BYTES = 64 * 1024
# cbor2's own recursion guard; the schema's MAX_DEPTH (16) is checked on the decoded value.
_CBOR_MAX_DEPTH = 32
_ALG_EDDSA_ED25519 = -19  # RFC 9864 "Ed25519"
_PROTECTED_PREFIX = bytes.fromhex("a2013204") + bytes([0x40 | KID_LEN])  # {1: -19, 4: bstr(16)}
_PROTECTED_LEN = len(_PROTECTED_PREFIX) + KID_LEN
_TAG18_ARRAY4 = b"\xd2\x84"
_SIG_HEADER = b"\x58\x40"  # bstr(64)
_SIG1_CONTEXT = b"\x84\x6aSignature1"  # array(4), tstr(10) "Signature1"


class Verdict(str, enum.Enum):
    """What a verifier decides about a message (DESIGN §2 "What the verifier decides")."""

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


@dataclass(frozen=True)
class Sealed:
    cose: bytes
    msg_id: bytes
    payload_bytes: bytes


@dataclass(frozen=True)
class Opened:
    """A decoded (and, from :func:`open_envelope`, verified) envelope."""

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
    """DESIGN §2: ``"edgeseal:v1:" + fleet_id``; binds every signature to one fleet."""
    return ("edgeseal:v1:" + fleet).encode("utf-8")


def _bstr_header(n: int) -> bytes:
    """The minimal CBOR header of a byte string of length ``n`` (RFC 8949 §3.1, §4.2.1)."""
    if n < 24:
        return bytes([0x40 | n])
    if n < 0x100:
        return bytes([0x58, n])
    if n < 0x10000:
        return bytes([0x59, n >> 8, n & 0xFF])
    return bytes([0x5A]) + n.to_bytes(4, "big")


def _bstr(data: bytes) -> bytes:
    return _bstr_header(len(data)) + data


def sig_structure(protected: bytes, fleet: str, payload_bytes: bytes) -> bytes:
    """Canonical CBOR of ``["Signature1", protected, external_aad, payload]`` (RFC 9052 §4.4)."""
    return b"".join((_SIG1_CONTEXT, _bstr(protected), _bstr(external_aad(fleet)), _bstr(payload_bytes)))


def protected_header(kid: bytes) -> bytes:
    return _PROTECTED_PREFIX + kid


def encode_payload(payload: Mapping[int, object]) -> bytes:
    """Check ``payload`` against DESIGN §2 and return its canonical CBOR; raise EnvelopeError(MALFORMED)."""
    plain = {int(k): v for k, v in payload.items()}
    try:
        check_payload(plain)
        return bytes(cbor2.dumps(plain, canonical=True))
    except (SchemaError, cbor2.CBOREncodeError, TypeError, ValueError) as e:
        raise EnvelopeError(Verdict.MALFORMED, f"cannot seal: {e}") from e


def seal(payload: Mapping[int, object], signer: Signer, fleet: str) -> Sealed:
    """Encode, sign and wrap a payload; the result verifies with :func:`open_envelope`."""
    payload_bytes = encode_payload(payload)
    protected = protected_header(signer.kid)
    signature = signer.sign(sig_structure(protected, fleet, payload_bytes))
    cose = b"".join((_TAG18_ARRAY4, _bstr(protected), b"\xa0", _bstr(payload_bytes), _SIG_HEADER, signature))
    if len(cose) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(Verdict.TOO_LARGE, f"envelope of {len(cose)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    return Sealed(cose=cose, msg_id=message_id(payload_bytes), payload_bytes=payload_bytes)


@dataclass(frozen=True)
class _Parts:
    protected: bytes
    kid: bytes
    payload_bytes: bytes
    signature: bytes


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


def _split(cose: bytes) -> _Parts:
    if len(cose) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(Verdict.TOO_LARGE, f"envelope of {len(cose)} bytes exceeds {MAX_ENVELOPE_BYTES}")
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
    payload_bytes, pos = _read_bstr(cose, pos + 1)
    if cose[pos : pos + 2] != _SIG_HEADER:
        raise EnvelopeError(Verdict.MALFORMED, f"signature must be a {SIGNATURE_LEN}-byte string")
    signature = cose[pos + 2 : pos + 2 + SIGNATURE_LEN]
    end = pos + 2 + SIGNATURE_LEN
    if len(signature) != SIGNATURE_LEN:
        raise EnvelopeError(Verdict.MALFORMED, "truncated envelope")
    if end != len(cose):
        raise EnvelopeError(Verdict.MALFORMED, f"{len(cose) - end} bytes after the envelope")
    return _Parts(protected, protected[len(_PROTECTED_PREFIX) :], payload_bytes, signature)


def _is_shortest_sorted(value: dict[int, Any], payload_bytes: bytes, saved: int) -> bool:
    """True when ``payload_bytes`` is the canonical encoding of ``value`` (fast path of the check).

    Why the length suffices: ``value`` was decoded from ``payload_bytes`` without indefinite lengths,
    so the bytes are one of its definite encodings. Every deviation from the canonical one other than
    key order (a longer integer or length header, a wider float, a tag that decodes to a plain value)
    makes the encoding longer, and the canonical encoding is the unique shortest one. So with the map
    keys in canonical order, the bytes are canonical exactly when their length is the shortest
    possible: cbor2's plain encoding (minimal headers, every float a 9-byte double) minus what the
    shortest float widths save.
    """
    if saved < 0:
        return False
    keys = list(value)
    if keys != sorted(keys):
        return False
    return len(cbor2.dumps(value)) - saved == len(payload_bytes)


def decode_payload(payload_bytes: bytes) -> tuple[dict[int, Any], Kind]:
    """Strictly decode payload bytes (step 5); raise EnvelopeError(MALFORMED) on any deviation."""
    try:
        value = cbor2.loads(
            payload_bytes, allow_duplicate_keys=False, allow_indefinite=False, max_depth=_CBOR_MAX_DEPTH
        )
    except Exception as e:  # cbor2 raises CBORDecodeError, but also ValueError/TypeError on odd input
        raise EnvelopeError(Verdict.MALFORMED, f"payload is not valid CBOR: {e}") from None
    if not isinstance(value, dict):
        raise EnvelopeError(Verdict.MALFORMED, "payload is not a map")
    try:
        kind, saved = scan_payload(value)
    except SchemaError as e:
        raise EnvelopeError(Verdict.MALFORMED, str(e)) from None
    if _is_shortest_sorted(value, payload_bytes, saved):
        return value, kind
    try:  # slow path: it decides the same, and words the error
        canonical = cbor2.dumps(value, canonical=True)
    except Exception as e:
        raise EnvelopeError(Verdict.MALFORMED, f"payload cannot be re-encoded: {e}") from None
    if canonical != payload_bytes:
        raise EnvelopeError(
            Verdict.MALFORMED, "payload is not in canonical form (key order, float width or a tag)"
        )
    return value, kind


def decode_unverified(cose: bytes) -> Opened:
    """Decode strictly without checking the signature (for display and for routing by kid)."""
    parts = _split(bytes(cose))
    payload, kind = decode_payload(parts.payload_bytes)
    return Opened(
        payload, parts.payload_bytes, message_id(parts.payload_bytes), parts.kid, parts.signature, kind
    )


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
    parts = _split(bytes(cose))
    verifier = _resolve(keys, parts.kid)
    if verifier is None:
        raise EnvelopeError(Verdict.UNKNOWN_KEY, f"signed by unknown key id {parts.kid.hex()}")
    if not verifier.verify(sig_structure(parts.protected, fleet, parts.payload_bytes), parts.signature):
        raise EnvelopeError(Verdict.BAD_SIGNATURE, "signature does not verify for this fleet and key")
    payload, kind = decode_payload(parts.payload_bytes)
    return Opened(
        payload, parts.payload_bytes, message_id(parts.payload_bytes), parts.kid, parts.signature, kind
    )


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
