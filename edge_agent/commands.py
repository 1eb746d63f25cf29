"""Operator commands: checks (pure) and the reply drafts.

A command is a COSE envelope of kind COMMAND on ``P/{dev}/cmd`` (docs/protocol.md §5). It is acted on only if,
in this order:

1. it opens with the fleet's operator key (signature over this fleet's external_aad) and is a
   well-formed COMMAND payload;
2. its ``dev`` is this device (a command signed for another device is not ours: ignored);
3. its ``exp`` is not past (``exp + CLOCK_SKEW_MS >= now``), and not more than
   :data:`MAX_COMMAND_TTL_S` ahead (the replay cache must hold an id until it expires, so the horizon
   bounds the cache);
4. its ``id`` was not seen before (the replay cache lives in the outbox database, so it survives
   restarts).

The replay cache's rule (docs/agent.md "Commands", kept by ``Outbox.remember_command``): an id is
forgotten only when step 3 refuses its command at the same clock reading, i.e. after
``exp + CLOCK_SKEW_MS``, not at ``exp``; forgetting raises a durable floor to the highest exp
forgotten, and a command whose exp is at or below the floor fails step 4. A command runs at most once
whatever the clock does: before its id is forgotten the cache refuses it, afterwards the floor does,
and the floor never moves down (a clock set back, a restart).

Failures of 1, 2 and 4 get no reply (an unsigned or replayed message must not make the device talk);
a well-signed command that is expired or unknown gets a signed error reply ``{"ok": false, "error"}``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent.outbox import MAX_REPLAY_IDS, Draft
from edge_protocol.commands import CommandName
from edge_protocol.envelope import EnvelopeError, open_envelope
from edge_protocol.keys import Verifier
from edge_protocol.payload import Key, Kind

# A command may live at most one day: the replay cache keeps every id until its exp, so this bounds
# the cache (with MAX_REPLAY_IDS) and limits how long a captured command stays usable.
MAX_COMMAND_TTL_S = 24 * 3600
# Clock skew tolerated between the operator and the device (NTP-synced Pis are within ~1 s; a Pi
# without RTC right after boot may be off more: then exp checks fail, which is the safe side).
CLOCK_SKEW_MS = 5_000
# The names a device answers (edge_protocol.commands), as its "unknown command" reply lists them.
BUILTINS = tuple(name.value for name in CommandName)


# Signed error replies to refused commands (expired, too far ahead, cache full): a token bucket of this
# many, refilled one every REFUSAL_REPLY_EVERY_S (docs/agent.md "Commands"). Replaying captured
# operator commands must not make the device sign replies into its own bounded outbox, where they would
# push out results; a refusal beyond the bucket is still refused, only without a reply, and counted.
REFUSAL_REPLY_BURST = 10
REFUSAL_REPLY_EVERY_S = 6.0


class ReplyBudget:
    """The token bucket of REFUSAL_REPLY_BURST (the clock is injected for tests)."""

    def __init__(
        self,
        burst: int = REFUSAL_REPLY_BURST,
        every_s: float = REFUSAL_REPLY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = float(burst)
        self._every = every_s
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._at) / self._every)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Refusal(str, enum.Enum):
    BAD_ENVELOPE = "bad envelope"  # no reply
    NOT_COMMAND = "not a command"  # no reply
    OTHER_DEVICE = "for another device"  # no reply
    REPLAYED = "replayed"  # no reply
    EXPIRED = "expired"  # signed error reply
    TOO_FAR = "expiry too far ahead"  # signed error reply
    CACHE_FULL = "replay cache full"  # signed error reply

    @property
    def replies(self) -> bool:
        return self in (Refusal.EXPIRED, Refusal.TOO_FAR, Refusal.CACHE_FULL)


class ReplayCache(Protocol):
    """Where step 4 remembers ids (the outbox database; see ``Outbox.remember_command``)."""

    def remember_command(
        self, command_id: bytes, exp_ms: int, now_ms: int, *, skew_ms: int
    ) -> bool | None: ...


@dataclass(frozen=True)
class Command:
    name: str
    args: Mapping[str, Any]
    id: bytes
    exp_ms: int
    t_ms: int = 0


@dataclass(frozen=True)
class Checked:
    """The outcome of :func:`check_command`: a command to run, or a refusal (with the id when known)."""

    command: Command | None
    refusal: Refusal | None = None
    detail: str = ""
    command_id: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def check_command(cose: bytes, fleet: str, dev: str, operator: Verifier, now_ms: int) -> Checked:
    """Steps 1-3 of the module docstring (the replay cache, step 4, is the caller's)."""
    try:
        opened = open_envelope(cose, fleet, operator)
    except EnvelopeError as e:
        return Checked(None, Refusal.BAD_ENVELOPE, f"{e.verdict.value}: {e.reason}")
    if opened.kind is not Kind.COMMAND:
        return Checked(None, Refusal.NOT_COMMAND, f"kind {opened.kind.name}")
    p = opened.payload
    if p[Key.DEV] != dev:
        return Checked(None, Refusal.OTHER_DEVICE, str(p[Key.DEV])[:63])
    cid = bytes(p[Key.ID])
    cmd = Command(str(p[Key.CMD]), dict(p.get(Key.ARGS, {})), cid, int(p[Key.EXP]), int(p[Key.T]))
    if cmd.exp_ms + CLOCK_SKEW_MS < now_ms:
        return Checked(None, Refusal.EXPIRED, f"expired {now_ms - cmd.exp_ms} ms ago", cid)
    if cmd.exp_ms - now_ms > MAX_COMMAND_TTL_S * 1000 + CLOCK_SKEW_MS:
        return Checked(None, Refusal.TOO_FAR, f"exp more than {MAX_COMMAND_TTL_S} s ahead", cid)
    return Checked(cmd, command_id=cid)


def admit_command(
    cose: bytes, fleet: str, dev: str, operator: Verifier, *, cache: ReplayCache, now_ms: int
) -> Checked:
    """Steps 1-4 of the module docstring: a command to run once, or a refusal."""
    checked = check_command(cose, fleet, dev, operator, now_ms)
    cmd = checked.command
    if cmd is None:
        return checked
    # The same clock reading and skew as step 3: the cache prunes exactly what step 3 now refuses.
    fresh = cache.remember_command(cmd.id, cmd.exp_ms, now_ms, skew_ms=CLOCK_SKEW_MS)
    if fresh is False:
        return Checked(
            None, Refusal.REPLAYED, f"{cmd.name[:63]}: id seen before, or exp at or below the floor", cmd.id
        )
    if fresh is None:
        return Checked(None, Refusal.CACHE_FULL, f"{cmd.name[:63]}: {MAX_REPLAY_IDS} live ids", cmd.id)
    return checked


def reply_draft(topic: str, command_id: bytes, reply: Mapping[str, Any]) -> Draft:
    """A REPLY in the device chain answering command ``command_id`` (docs/protocol.md §3 keys 20, 22)."""
    return Draft(Kind.REPLY, {Key.ID: command_id, Key.REPLY: dict(reply)}, topic)


def error_reply(error: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": error, **extra}
