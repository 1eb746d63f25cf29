"""Fuzz target: the payload schema (:func:`edge_protocol.payload.check_payload`, docs/protocol.md §3).

The input is decoded by cbor2's ordinary, lenient decoder, so that every value CBOR can carry reaches
the schema: tags (as ``CBORTag``, or decoded to ``datetime``, ``Decimal``, sets...), undefined and
simple values, maps with any keys. Input that is not CBOR is no test of the schema and is skipped.

Only :class:`SchemaError` is documented. Property: a map the schema accepts can be sealed
(:func:`encode_payload`), and strictly decoding that encoding gives the same map and kind back.
"""

from __future__ import annotations

from typing import Any

import cbor2

from edge_protocol.envelope import decode_payload, encode_payload
from edge_protocol.payload import SchemaError, check_payload


def _lenient_loads(data: bytes) -> Any:
    return cbor2.loads(data)


def one_input(data: bytes) -> None:
    try:
        value = _lenient_loads(data)
    except Exception:  # not CBOR: nothing for the schema to check (cbor2 is not under test)
        return
    try:
        kind = check_payload(value)
    except SchemaError:
        return
    encoded = encode_payload(value)
    assert decode_payload(encoded) == (value, kind), "an accepted payload does not survive a round trip"
