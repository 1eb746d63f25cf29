"""The payload of an envelope (DESIGN §2): integer keys 0-23, kinds, and the schema each kind obeys.

The schema is checked on both sides, by :func:`edge_protocol.envelope.seal` before signing and by the
verifier after the signature: a well-signed message with a missing, unknown or mistyped key is
MALFORMED. Which keys a kind requires and allows is this module's reading of the "used in" column.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
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


class SchemaError(ValueError):
    """The payload is not of the form DESIGN §2 fixes; the message says where."""


def _plain(value: object, depth: int) -> bool:
    """Fast path of :func:`check_value`: True when the value is fine (no error text is built)."""
    t = type(value)
    if t is str or t is bytes or t is bool or value is None:
        return True
    if t is int:
        return INT_MIN <= value <= UINT_MAX  # type: ignore[operator]
    if t is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    if depth >= MAX_DEPTH:
        return False
    if t is list:
        return all(_plain(item, depth + 1) for item in value)  # type: ignore[attr-defined]
    if t is dict:
        return all(
            type(k) is str and len(k.encode("utf-8")) <= MAX_TEXT_KEY_BYTES and _plain(v, depth + 1)
            for k, v in value.items()  # type: ignore[attr-defined]
        )
    return False


def check_value(value: object, where: str, depth: int = 1) -> None:
    """Check a nested value: only CBOR's plain data model, finite floats, text-keyed maps, bounded depth."""
    if depth > MAX_DEPTH:
        raise SchemaError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    t = type(value)
    if t is str or t is bytes or t is bool or value is None:
        return
    if t is int:
        if not INT_MIN <= value <= UINT_MAX:  # type: ignore[operator]
            raise SchemaError(f"{where}: integer out of the 64-bit CBOR range")
        return
    if t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise SchemaError(f"{where}: NaN and infinities are not allowed")
        return
    if isinstance(value, (list, tuple)):
        item: object
        for i, item in enumerate(value):
            check_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if type(k) is not str:
                raise SchemaError(f"{where}: nested maps take text keys only, found {type(k).__name__}")
            if len(k) > MAX_TEXT_KEY_BYTES // 4 and len(k.encode("utf-8")) > MAX_TEXT_KEY_BYTES:
                raise SchemaError(f"{where}: key longer than {MAX_TEXT_KEY_BYTES} bytes")
            check_value(v, f"{where}.{k}", depth + 1)
        return
    if isinstance(value, int) and not isinstance(value, bool):  # IntEnum and other int subclasses
        check_value(int(value), where, depth)
        return
    raise SchemaError(f"{where}: type {type(value).__name__} is not allowed")


def _is_uint(v: object) -> bool:
    return type(v) is int and 0 <= v <= UINT_MAX


def _is_b32(v: object) -> bool:
    return type(v) is bytes and len(v) == 32


def _is_b16(v: object) -> bool:
    return type(v) is bytes and len(v) == 16


def _is_map(v: object) -> bool:
    return isinstance(v, Mapping)


def _is_cmd(v: object) -> bool:
    return type(v) is str and 0 < len(v) <= 63


# key -> (check of the value's own type, description for the error)
_VALUE_CHECKS: dict[int, tuple[Callable[[object], bool], str]] = {
    **{int(k): (_is_uint, "an unsigned integer") for k in (Key.BOOT, Key.SEQ, Key.T, Key.EXP, Key.LAT)},
    **{
        int(k): (_is_b32, "a 32-byte string")
        for k in (Key.PREV, Key.MODEL, Key.INPUT, Key.CFG, Key.SRC, Key.KEY, Key.CLAIM)
    },
    **{int(k): (_is_map, "a map") for k in (Key.OUT, Key.INFO, Key.METRICS, Key.GAP, Key.ARGS, Key.REPLY)},
    int(Key.ID): (_is_b16, "a 16-byte string"),
    int(Key.DEV): (is_valid_id, "a valid id"),
    int(Key.PIPE): (is_valid_id, "a valid id"),
    int(Key.CMD): (_is_cmd, "a short text"),
}
# Keys whose values can hold nested data and so need the recursive check.
_NESTED = frozenset(int(k) for k in (Key.OUT, Key.INFO, Key.METRICS, Key.GAP, Key.ARGS, Key.REPLY))
_KIND_KEYS: dict[int, tuple[frozenset[int], frozenset[int]]] = {
    int(kind): (
        frozenset(int(k) for k in req | _COMMON),
        frozenset(int(k) for k in req | _COMMON | opt),
    )
    for kind, (req, opt) in SCHEMA.items()
}


def check_payload(payload: Mapping[Any, Any]) -> Kind:
    """Check a payload map against the schema of its kind; return the kind or raise SchemaError."""
    if not isinstance(payload, Mapping):
        raise SchemaError("the payload is not a map")
    v = payload.get(0)
    if type(v) is not int or v != WIRE_VERSION:
        raise SchemaError(f"v must be {WIRE_VERSION}")
    raw_kind = payload.get(6)
    keys = _KIND_KEYS.get(raw_kind) if type(raw_kind) is int else None
    if keys is None:
        raise SchemaError(f"unknown kind {raw_kind!r}")
    kind = Kind(int(raw_kind))  # type: ignore[arg-type]
    required, allowed = keys
    present = payload.keys()
    if not required <= present:
        missing = sorted(KEY_NAMES[m] for m in required - set(present))
        raise SchemaError(f"{kind.name.lower()} lacks {', '.join(missing)}")
    for k, value in payload.items():
        if k not in allowed or type(k) is not int:
            if isinstance(k, int) and not isinstance(k, bool) and k in KEY_NAMES and type(k) is not int:
                raise SchemaError(f"payload key {k!r} must be a plain integer")
            if k in KEY_NAMES and type(k) is int:
                raise SchemaError(f"{kind.name.lower()} must not carry {KEY_NAMES[k]}")
            raise SchemaError(f"unknown payload key {k!r}")
        check = _VALUE_CHECKS.get(k)
        if check is not None and not check[0](value):
            raise SchemaError(f"{KEY_NAMES[k]} must be {check[1]}")
        if k in _NESTED and not _plain(value, 1):
            check_value(value, KEY_NAMES[k])  # slow path: finds and names the fault
    return kind
