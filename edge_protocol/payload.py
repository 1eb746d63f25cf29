"""The payload of an envelope (docs/protocol.md §3): integer keys 0-23, kinds, and the schema each kind obeys.

The schema is checked on both sides, by :func:`edge_protocol.envelope.seal` before signing and by the
verifier after the signature: a well-signed message with a missing, unknown or mistyped key is
MALFORMED. Which keys a kind requires and allows is this module's reading of the "used in" column.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Mapping
from typing import Any

from edge_protocol.ids import is_valid_id

# docs/protocol.md §3: nested maps use text keys of at most 63 bytes; nesting at most 16 levels deep.
MAX_TEXT_KEY_BYTES = 63
MAX_DEPTH = 16
# docs/protocol.md §3 "Integers": every integer in a payload, at any depth, lies in -(2^53-1)..2^53-1,
# the range I-JSON fixes (RFC 7493 §2.2). Every layer that handles a payload holds it exactly: SQLite
# and PostgreSQL (64-bit integers), JSON readers that use doubles (JavaScript), the verified JSON the
# collector republishes. CBOR itself reaches 2^64-1 (major type 0); those values are MALFORMED.
INT_MAX = 2**53 - 1
INT_MIN = -INT_MAX
UINT_MAX = INT_MAX  # the unsigned keys (boot, seq, t, exp, lat): 0..INT_MAX
WIRE_VERSION = 1


class Kind(enum.IntEnum):
    BIRTH = 0
    RESULT = 1
    HEARTBEAT = 2
    GAP = 3
    REPLY = 4
    ACK = 5
    COMMAND = 6


# Kinds 0-4 are signed by the device and sit in its chain (docs/protocol.md §4 "Which key verifies which
# kind").
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
    """The payload is not of the form docs/protocol.md §3 fixes; the message says where."""


_F16 = struct.Struct("<e")
_F32 = struct.Struct("<f")
# What _scan found, besides the floats: _UNSORTED is a bit, so that it sticks under "|".
_UNSORTED = 1  # a map's keys are not in canonical order (an encoding matter, not a schema one)
_INVALID = -1  # something the schema refuses; check_value finds and names it
_LEAVES = frozenset({str, bytes, bool, type(None)})  # values valid as they are, at any depth
_isfinite = math.isfinite


def float_savings(x: float) -> int:
    """Bytes the shortest value-keeping width saves against a 9-byte double (half: 6, single: 4).

    The same rule as cbor2's canonical encoder: single if the value survives the round trip, and
    half if it survives that one too (every half value is a single value). Most measured values are
    neither, so the single-width test comes first.
    """
    try:
        if _F32.unpack(_F32.pack(x))[0] != x:
            return 0
    except (OverflowError, struct.error):
        return 0
    try:
        if _F16.unpack(_F16.pack(x))[0] == x:
            return 6
    except (OverflowError, struct.error):
        pass
    return 4


def _scan(value: object, depth: int, floats: list[float]) -> int:
    """One pass over a nested value: the schema's fast path, key order, and the floats in it.

    Returns 0, or ``_UNSORTED`` (valid, but some map below is not in canonical order) or ``_INVALID``;
    appends every float found to ``floats``. No error text is built here. Leaves inside lists and
    maps are handled in the loops themselves (a call per leaf costs more than the check).
    """
    t = type(value)
    if t in _LEAVES:
        return 0
    if t is int:
        return 0 if INT_MIN <= value <= INT_MAX else _INVALID  # type: ignore[operator]
    if t is float:
        if not _isfinite(value):  # type: ignore[arg-type]
            return _INVALID
        floats.append(value)  # type: ignore[arg-type]
        return 0
    if depth >= MAX_DEPTH:
        return _INVALID
    if t is list:
        return _scan_items(value, depth, floats)  # type: ignore[arg-type]
    if t is dict:
        return _scan_map(value, depth, floats)  # type: ignore[arg-type]
    return _INVALID


def _scan_items(items: list[Any], depth: int, floats: list[float]) -> int:
    """:func:`_scan` of the items of a list at ``depth``."""
    status = 0
    for item in items:
        t = type(item)
        if t is float:
            if not _isfinite(item):
                return _INVALID
            floats.append(item)
        elif t is int:
            if not INT_MIN <= item <= INT_MAX:
                return _INVALID
        elif t not in _LEAVES:
            s = _scan(item, depth + 1, floats)
            if s == _INVALID:
                return s
            status |= s  # _UNSORTED sticks; keep going, what follows must still be checked
    return status


def _scan_map(value: dict[Any, Any], depth: int, floats: list[float]) -> int:
    """:func:`_scan` of a nested map at ``depth``: text keys of at most 63 bytes, in canonical order."""
    status = 0
    last_len = -1
    last = b""
    for k, v in value.items():
        if type(k) is not str:
            return _INVALID
        kb = k.encode("utf-8")
        n = len(kb)
        if n > MAX_TEXT_KEY_BYTES:
            return _INVALID
        # RFC 8949 §4.2.1 orders keys by their encoding; for text keys that is length first, then bytes
        if n < last_len or (n == last_len and kb <= last):
            status = _UNSORTED
        last_len, last = n, kb
        t = type(v)
        if t is float:
            if not _isfinite(v):
                return _INVALID
            floats.append(v)
        elif t is int:
            if not INT_MIN <= v <= INT_MAX:
                return _INVALID
        elif t not in _LEAVES:
            s = _scan(v, depth + 1, floats)
            if s == _INVALID:
                return s
            status |= s
    return status


def check_value(value: object, where: str, depth: int = 1) -> None:
    """Check a nested value: only CBOR's plain data model, finite floats, text-keyed maps, bounded depth."""
    if depth > MAX_DEPTH:
        raise SchemaError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    t = type(value)
    if t is str or t is bytes or t is bool or value is None:
        return
    if t is int:
        if not INT_MIN <= value <= INT_MAX:  # type: ignore[operator]
            raise SchemaError(f"{where}: integer outside -(2^53-1)..2^53-1")
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


# How each key's value is checked: a small code per key so the hot loop needs no function calls.
_UINT, _B32, _B16, _ID, _MAP, _CMD = range(6)
_CODES: dict[int, int] = {
    **{int(k): _UINT for k in (Key.BOOT, Key.SEQ, Key.T, Key.EXP, Key.LAT)},
    **{int(k): _B32 for k in (Key.PREV, Key.MODEL, Key.INPUT, Key.CFG, Key.SRC, Key.KEY, Key.CLAIM)},
    **{int(k): _MAP for k in (Key.OUT, Key.INFO, Key.METRICS, Key.GAP, Key.ARGS, Key.REPLY)},
    int(Key.ID): _B16,
    int(Key.DEV): _ID,
    int(Key.PIPE): _ID,
    int(Key.CMD): _CMD,
    int(Key.V): -1,
    int(Key.KIND): -1,
}
# The keys whose value is a nested map (text keys, any depth up to MAX_DEPTH).
MAP_KEYS = tuple(sorted(k for k, code in _CODES.items() if code == _MAP))
_WANTS = {
    _UINT: "an integer in 0..2^53-1",
    _B32: "a 32-byte string",
    _B16: "a 16-byte string",
    _ID: "a valid id",
    _MAP: "a map",
    _CMD: "a short text",
}
# kind -> (the kind, required keys, {allowed key: check code})
_KIND_KEYS: dict[int, tuple[Kind, frozenset[int], dict[int, int]]] = {
    int(kind): (
        kind,
        frozenset(int(k) for k in req | _COMMON),
        {int(k): _CODES[int(k)] for k in req | _COMMON | opt},
    )
    for kind, (req, opt) in SCHEMA.items()
}


def check_payload(payload: Mapping[Any, Any]) -> Kind:
    """Check a payload map against the schema of its kind; return the kind or raise SchemaError."""
    return scan_payload(payload)[0]


def _wrong(k: int, code: int) -> SchemaError:
    return SchemaError(f"{KEY_NAMES[k]} must be {_WANTS[code]}")


def scan_payload(payload: Mapping[Any, Any]) -> tuple[Kind, list[float] | None]:
    """:func:`check_payload`, also returning every float inside, in the order they are encoded.

    The list is None instead when some map, the top-level one included, is not in canonical key
    order (an encoding matter, not a schema one). Sealing and opening both need to know, so it is
    one pass; the checks are the same either way.
    """
    if type(payload) is not dict and not isinstance(payload, Mapping):
        raise SchemaError("the payload is not a map")
    v = payload.get(0)
    if type(v) is not int or v != WIRE_VERSION:
        raise SchemaError(f"v must be {WIRE_VERSION}")
    raw_kind = payload.get(6)
    keys = _KIND_KEYS.get(raw_kind) if type(raw_kind) is int else None
    if keys is None:
        raise SchemaError(f"unknown kind {raw_kind!r}")
    kind, required, allowed = keys
    if not required <= payload.keys():
        missing = sorted(KEY_NAMES[m] for m in required - set(payload.keys()))
        raise SchemaError(f"{kind.name.lower()} lacks {', '.join(missing)}")
    floats: list[float] = []
    status = 0
    last = -1  # top-level keys ascending: for the integers 0-23 that is canonical order
    for k, value in payload.items():
        code = allowed.get(k) if type(k) is int else None
        if code is None:
            if isinstance(k, int) and not isinstance(k, bool) and k in KEY_NAMES and type(k) is not int:
                raise SchemaError(f"payload key {k!r} must be a plain integer")
            if type(k) is int and k in KEY_NAMES:
                raise SchemaError(f"{kind.name.lower()} must not carry {KEY_NAMES[k]}")
            raise SchemaError(f"unknown payload key {k!r}")
        if k < last:
            status = _UNSORTED
        last = k
        t = type(value)
        if code == _B32:  # the codes in order of how often they occur
            if t is not bytes or len(value) != 32:
                raise _wrong(k, code)
        elif code == _UINT:
            if t is not int or not 0 <= value <= UINT_MAX:
                raise _wrong(k, code)
        elif code == _ID:
            if not is_valid_id(value):
                raise _wrong(k, code)
        elif code == _MAP:
            if not isinstance(value, Mapping):
                raise SchemaError(f"{KEY_NAMES[k]} must be a map")
            s = _scan(value, 1, floats)
            if s == _INVALID:
                check_value(value, KEY_NAMES[k])  # names the fault (or accepts a non-dict Mapping)
                s = _UNSORTED
            status |= s
        elif code == _B16:
            if t is not bytes or len(value) != 16:
                raise _wrong(k, code)
        elif code == _CMD and (t is not str or not 0 < len(value) <= 63):
            raise _wrong(k, code)
    return kind, (None if status else floats)


def to_json(value: Any) -> Any:
    """A payload value as JSON data: bytes as lowercase hex, maps with text keys, lists as lists."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def named(payload: Mapping[int, Any]) -> dict[str, Any]:
    """The payload with its keys named (``dev``, ``seq``, …: docs/protocol.md §3), the kind by name, bytes
    as hex."""
    out: dict[str, Any] = {}
    for k in sorted(payload):
        value = payload[k]
        if k == Key.KIND and value in Kind._value2member_map_:
            out["kind"] = Kind(value).name.lower()
        else:
            out[KEY_NAMES.get(k, str(k))] = to_json(value)
    return out
