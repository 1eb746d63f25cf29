"""The advisory ``state`` message a device keeps retained on ``P/{dev}/state`` (docs/protocol.md §5).

``{"state": "online" | "offline", "boot": N, "t": ms}``: JSON, unsigned, so it is never evidence of
anything; it only says whether a device is connected (its Will publishes ``offline``). Being unsigned,
anyone with write access to the topic can send any bytes there, retained, so :func:`parse_state` is
strict: at most :data:`MAX_STATE_BYTES`, UTF-8 JSON, an object, ``state`` one of the two words,
``boot`` and ``t`` (when present) integers in the payload range of docs/protocol.md §3 "Integers".
Anything else is a :class:`StateError`. Unknown members are ignored (a later agent may add some).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from edge_protocol.errors import ProtocolError
from edge_protocol.payload import UINT_MAX

# docs/protocol.md §5: the state message is a small JSON object; the agent's is under 60 bytes.
MAX_STATE_BYTES = 1024


class Presence(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"


class StateError(ProtocolError, ValueError):
    """A state message that is not of the form docs/protocol.md §5 fixes."""


@dataclass(frozen=True)
class State:
    presence: Presence
    boot: int | None  # the boot the device was in when it said so
    t: int | None  # ms since the Unix epoch, the device's clock (advisory)


def encode_state(presence: Presence, boot: int, t_ms: int) -> bytes:
    """The JSON an agent publishes (compact, members in this order)."""
    for name, value in (("boot", boot), ("t", t_ms)):
        if type(value) is not int or not 0 <= value <= UINT_MAX:
            raise StateError(f"state {name} must be an integer in 0..{UINT_MAX}, not {value!r}")
    return json.dumps({"state": presence.value, "boot": boot, "t": t_ms}, separators=(",", ":")).encode()


def _int(doc: dict[str, object], name: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= UINT_MAX:
        raise StateError(f"state {name} must be an integer in 0..{UINT_MAX}")
    return value


def _no_constant(name: str) -> float:
    raise StateError(f"state message holds {name}, which JSON does not allow")


def parse_state(payload: bytes) -> State:
    """Read a state message; raise :class:`StateError` for anything but the documented form."""
    if len(payload) > MAX_STATE_BYTES:
        raise StateError(f"state message over {MAX_STATE_BYTES} bytes")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StateError("state message is not UTF-8") from e
    try:
        # Python's json takes NaN and Infinity, and integers of any length (bounded here by the size
        # limit above, far below int()'s digit limit); both are refused by the checks that follow.
        doc = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        if isinstance(e, StateError):
            raise
        raise StateError("state message is not JSON") from e
    if not isinstance(doc, dict):
        raise StateError("state message is not a JSON object")
    try:
        presence = Presence(doc.get("state"))
    except (ValueError, TypeError) as e:
        raise StateError('state must be "online" or "offline"') from e
    return State(presence, _int(doc, "boot"), _int(doc, "t"))


def online(state: State | None, current_boot: int | None) -> bool | None:
    """Whether a device counts as online (docs/protocol.md §5): its last state says ``online``, or
    says ``offline`` for an older boot than ``current_boot`` (the Will of a previous connection that
    arrived after the new birth). None: no state seen."""
    if state is None:
        return None
    if state.presence is Presence.ONLINE:
        return True
    return state.boot is not None and current_boot is not None and state.boot < current_boot
