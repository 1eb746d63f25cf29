"""The payload of an envelope (DESIGN §2): integer keys 0-23, kinds, and the schema each kind obeys.

The schema is checked on both sides, by :func:`edge_protocol.envelope.seal` before signing and by the
verifier after the signature: a well-signed message with a missing, unknown or mistyped key is
MALFORMED. Which keys a kind requires and allows is this module's reading of the "used in" column.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

from edge_protocol.ids import is_valid_id

# DESIGN §2: nested maps use text keys of at most 63 bytes; nesting at most 16 levels deep.
MAX_TEXT_KEY_BYTES = 63
MAX_DEPTH = 16
UINT_MAX = 2**64 - 1  # CBOR major type 0 range; larger ints would need tag 2 (no tags allowed)
INT_MIN = -(2**64)
WIRE_VERSION = 1


class Kind(enum.IntEnum):
    BIRTH = 0
    RESULT = 1
    HEARTBEAT = 2
    GAP = 3
    REPLY = 4
    ACK = 5
    COMMAND = 6


# Kinds 0-4 are signed by the device and sit in its chain (DESIGN §2 "Signers").
DEVICE_KINDS = frozenset({Kind.BIRTH, Kind.RESULT, Kind.HEARTBEAT, Kind.GAP, Kind.REPLY})


class Key(enum.IntEnum):
    V = 0
    DEV = 1
    BOOT = 2
    SEQ = 3
    PREV = 4
    T = 5
    KIND = 6
    PIPE = 7
    MODEL = 8
    INPUT = 9
    OUT = 10
    CFG = 11
    SRC = 12
    KEY = 13
    CLAIM = 14
    INFO = 15
    METRICS = 16
    GAP = 17
    CMD = 18
    ARGS = 19
    ID = 20
    EXP = 21
    REPLY = 22
    LAT = 23


KEY_NAMES: dict[int, str] = {k.value: k.name.lower() for k in Key}

_COMMON = frozenset({Key.V, Key.DEV, Key.T, Key.KIND})
_CHAIN = frozenset({Key.BOOT, Key.SEQ, Key.PREV})
# kind -> (required keys beyond the common ones, optional keys)
SCHEMA: dict[Kind, tuple[frozenset[Key], frozenset[Key]]] = {
    Kind.BIRTH: (_CHAIN | {Key.KEY}, frozenset({Key.CLAIM, Key.INFO})),
    Kind.RESULT: (_CHAIN | {Key.PIPE, Key.MODEL, Key.INPUT, Key.OUT}, frozenset({Key.CFG, Key.SRC, Key.LAT})),
    Kind.HEARTBEAT: (_CHAIN | {Key.METRICS}, frozenset()),
    Kind.GAP: (_CHAIN | {Key.GAP}, frozenset()),
    Kind.REPLY: (_CHAIN | {Key.ID, Key.REPLY}, frozenset()),
    Kind.ACK: (frozenset({Key.BOOT, Key.SEQ}), frozenset()),
    Kind.COMMAND: (frozenset({Key.CMD, Key.ID, Key.EXP}), frozenset({Key.ARGS})),
}

_UINT_KEYS = frozenset({Key.BOOT, Key.SEQ, Key.T, Key.EXP, Key.LAT})
_B32_KEYS = frozenset({Key.PREV, Key.MODEL, Key.INPUT, Key.CFG, Key.SRC, Key.KEY, Key.CLAIM})
_MAP_KEYS = frozenset({Key.OUT, Key.INFO, Key.METRICS, Key.GAP, Key.ARGS, Key.REPLY})


class SchemaError(ValueError):
    """The payload is not of the form DESIGN §2 fixes; the message says where."""


def check_value(value: object, where: str, depth: int = 1) -> None:
    """Check a nested value: only CBOR's plain data model, finite floats, text-keyed maps, bounded depth."""
    if depth > MAX_DEPTH:
        raise SchemaError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, str, bytes)):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= UINT_MAX:
            raise SchemaError(f"{where}: integer out of the 64-bit CBOR range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaError(f"{where}: NaN and infinities are not allowed")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise SchemaError(f"{where}: nested maps take text keys only, found {type(k).__name__}")
            if len(k.encode("utf-8")) > MAX_TEXT_KEY_BYTES:
                raise SchemaError(f"{where}: key longer than {MAX_TEXT_KEY_BYTES} bytes")
            check_value(v, f"{where}.{k}", depth + 1)
        return
    raise SchemaError(f"{where}: type {type(value).__name__} is not allowed")


def _is_uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= UINT_MAX


def check_payload(payload: Mapping[Any, Any]) -> Kind:
    """Check a payload map against the schema of its kind; return the kind or raise SchemaError."""
    if not isinstance(payload, Mapping):
        raise SchemaError("the payload is not a map")
    for k in payload:
        if not isinstance(k, int) or isinstance(k, bool) or k not in KEY_NAMES:
            raise SchemaError(f"unknown payload key {k!r}")
    if payload.get(Key.V) != WIRE_VERSION or isinstance(payload.get(Key.V), bool):
        raise SchemaError(f"v must be {WIRE_VERSION}")
    raw_kind = payload.get(Key.KIND)
    if not _is_uint(raw_kind) or raw_kind not in Kind._value2member_map_:
        raise SchemaError(f"unknown kind {raw_kind!r}")
    kind = Kind(int(raw_kind))  # type: ignore[arg-type]
    required, optional = SCHEMA[kind]
    required = required | _COMMON
    present = {Key(k) for k in payload}
    missing = required - present
    if missing:
        raise SchemaError(f"{kind.name.lower()} lacks {', '.join(sorted(KEY_NAMES[m] for m in missing))}")
    extra = present - required - optional
    if extra:
        raise SchemaError(
            f"{kind.name.lower()} must not carry {', '.join(sorted(KEY_NAMES[m] for m in extra))}"
        )
    for k, v in payload.items():
        key = Key(k)
        name = KEY_NAMES[k]
        if key in _UINT_KEYS and not _is_uint(v):
            raise SchemaError(f"{name} must be an unsigned integer")
        if key in _B32_KEYS and not (isinstance(v, bytes) and len(v) == 32):
            raise SchemaError(f"{name} must be a 32-byte string")
        if key is Key.ID and not (isinstance(v, bytes) and len(v) == 16):
            raise SchemaError("id must be a 16-byte string")
        if key in (Key.DEV, Key.PIPE) and not is_valid_id(v):
            raise SchemaError(f"{name} is not a valid id")
        if key is Key.CMD and not (isinstance(v, str) and 0 < len(v) <= 63):
            raise SchemaError("cmd must be a short text")
        if key in _MAP_KEYS and not isinstance(v, Mapping):
            raise SchemaError(f"{name} must be a map")
        check_value(v, name)
    return kind
