"""Fuzz target: opening an envelope (edge_protocol.envelope, docs/protocol.md §2).

The input is tried three ways:

1. as an envelope, verified with a fixed key and fleet (:func:`open_envelope`);
2. as an envelope, decoded without verification (:func:`decode_unverified`, what ``fleet inspect``
   and routing by kid use);
3. as the payload bytes of an envelope that this target signs with that key, so that arbitrary
   payloads get past the signature check and reach the strict CBOR and schema step (step 5).

Only :class:`EnvelopeError` is documented. Properties: whatever opens also decodes unverified to the
same payload; an opened payload is exactly the canonical encoding that :func:`encode_payload` gives.
"""

from __future__ import annotations

import cbor2

from edge_protocol.envelope import (
    EnvelopeError,
    Opened,
    Verdict,
    decode_payload,
    decode_unverified,
    encode_payload,
    open_envelope,
    protected_header,
    sig_structure,
)
from edge_protocol.keys import Signer, Verifier

# The signer of tests/vectors/envelope.json (dev-01, seed 00 01 .. 1f) and its fleet, so that the
# vectors in the seed corpus open with ACCEPTED.
FLEET = "demo"
SIGNER = Signer.from_seed(bytes(range(32)))
VERIFIER = Verifier(SIGNER.public_key)
_PROTECTED = protected_header(VERIFIER.kid)
# tag 18, array(4), then protected, unprotected {} (RFC 9052 §4.2).
_HEAD = b"\xd2\x84" + cbor2.dumps(_PROTECTED) + b"\xa0"


def sign_payload(payload_bytes: bytes) -> bytes:
    """A COSE_Sign1 envelope around ``payload_bytes``, signed by :data:`SIGNER` for :data:`FLEET`."""
    signature = SIGNER.sign(sig_structure(_PROTECTED, FLEET, payload_bytes))
    return _HEAD + cbor2.dumps(payload_bytes) + cbor2.dumps(signature)


def _check_canonical(opened: Opened) -> None:
    assert encode_payload(opened.payload) == opened.payload_bytes, "accepted a non-canonical payload"


def one_input(data: bytes) -> None:
    try:
        opened: Opened | None = open_envelope(data, FLEET, VERIFIER)
    except EnvelopeError:
        opened = None
    try:
        unverified: Opened | None = decode_unverified(data)
    except EnvelopeError:
        unverified = None
    if opened is not None:
        assert unverified == opened, "opens verified but not unverified, or to another payload"
        _check_canonical(opened)

    try:
        signed = open_envelope(sign_payload(data), FLEET, VERIFIER)
    except EnvelopeError as e:
        if e.verdict is Verdict.TOO_LARGE:
            return
        try:
            decode_payload(data)
        except EnvelopeError:
            return
        raise AssertionError("a payload that decodes is refused once signed") from None
    _check_canonical(signed)
    assert signed.payload_bytes == data
