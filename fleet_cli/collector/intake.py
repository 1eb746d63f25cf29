"""Verification of one received message, no threads and no MQTT (docs/collector.md "Verification"):
the registry as the verifier needs it (:class:`Directory`), and :class:`Intake`, which decides.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from edge_protocol.chain import ChainVerifier, Link
from edge_protocol.envelope import (
    MAX_ENVELOPE_BYTES,
    EnvelopeError,
    Opened,
    Verdict,
    decode_unverified,
    open_envelope,
)
from edge_protocol.errors import InvalidTopic
from edge_protocol.keys import claim_tag
from edge_protocol.payload import Key, Kind
from edge_protocol.state import StateError, parse_state
from edge_protocol.topics import (
    DEVICE_SIGNED,
    Channel,
    DeviceTopic,
    parse_topic,
)
from fleet_cli.collector.config import (
    DIRECTORY_CACHE,
    REGISTRY_RECHECK_S,
)
from fleet_cli.collector.store import (
    Candidate,
    Rejected,
    StateUpdate,
)
from fleet_cli.collector.verify_worker import (
    Answer,
    Refused,
    Verified,
    Verifiers,
    check_opened,
    verify_bound,
)
from fleet_cli.registry import ConflictError, NotFoundError, Registry
from fleet_cli.terminal import escape

log = logging.getLogger(__name__)


# ---- the registry as the verifier needs it ----------------------------------------------------


@dataclass(frozen=True)
class DeviceEntry:
    known: bool
    revoked: bool = False
    key: bytes | None = None
    claim_token: bytes | None = None


class Directory(Protocol):
    """What verification needs from the registry (an I/O boundary)."""

    def entry(self, dev: str, *, fresh: bool = False) -> DeviceEntry: ...

    def bind(self, dev: str, key: bytes) -> None: ...


class RegistryDirectory:
    """:class:`Directory` over the fleet registry, cached for :data:`REGISTRY_RECHECK_S`."""

    def __init__(self, registry: Registry, clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._clock = clock
        self._cache: dict[str, tuple[float, DeviceEntry]] = {}

    def entry(self, dev: str, *, fresh: bool = False) -> DeviceEntry:
        now = self._clock()
        hit = self._cache.get(dev)
        if hit is not None and not fresh and now - hit[0] < REGISTRY_RECHECK_S:
            return hit[1]
        if len(self._cache) >= DIRECTORY_CACHE:
            self._cache.clear()
        try:
            rec = self._registry.get_device(dev)
        except NotFoundError:
            e = DeviceEntry(known=False)
        else:
            token = None if rec.public_key is not None else self._registry.claim_token(dev)
            e = DeviceEntry(True, rec.revoked_ms is not None, rec.public_key, token)
        self._cache[dev] = (now, e)
        return e

    def bind(self, dev: str, key: bytes) -> None:
        self._registry.bind_key(dev, key)
        self._cache.pop(dev, None)


# ---- verification of one message (no threads, no MQTT) ----------------------------------------


@dataclass(frozen=True)
class Duplicate:
    dev: str
    boot: int


Outcome = Candidate | Rejected | Duplicate | StateUpdate


def _sanitize(text: str, limit: int = 80) -> str:
    """Device-supplied text made safe for a log line: escaped and bounded (fleet_cli/terminal.py)."""
    return escape(text, limit)


@dataclass(frozen=True)
class Route:
    """A message that needs only :func:`~fleet_cli.collector.verify_worker.verify_bound` before the chain: the
    topic is a device channel of this fleet, the device is known, not revoked and has a bound key."""

    dev: str
    channel: str
    pipe: str | None
    key: bytes


# How many parsed topics the intake remembers (a fleet has a handful of topics per device).
TOPIC_CACHE = 65_536


class Intake:
    """Decides about one received message: the verification steps of the module docstring.

    :meth:`judge` does all of it in the calling thread. A collector with verify workers splits it:
    :meth:`route` (cheap, in order) says whether the message can be verified elsewhere, the worker
    runs :func:`~fleet_cli.collector.verify_worker.verify_bound`, and :meth:`conclude` (in order) runs
    the chain.
    """

    def __init__(self, fleet: str, directory: Directory, chain: ChainVerifier) -> None:
        self.fleet = fleet
        self.directory = directory
        self.chain = chain
        self._verifiers = Verifiers()
        self._topics: dict[str, DeviceTopic] = {}
        self.late = 0

    def _topic(self, topic: str) -> DeviceTopic:
        """:func:`parse_topic`, remembered for valid topics (invalid ones are parsed again each time)."""
        hit = self._topics.get(topic)
        if hit is None:
            hit = parse_topic(topic)
            if len(self._topics) >= TOPIC_CACHE:
                self._topics.clear()
            self._topics[topic] = hit
        return hit

    def route(self, topic: str, payload: bytes) -> Route | None:
        """The :class:`Route` of a message on the common path, or None: then :meth:`judge` decides it."""
        try:
            dt = self._topic(topic)
        except InvalidTopic:
            return None
        if dt.fleet != self.fleet or len(payload) > MAX_ENVELOPE_BYTES or dt.channel not in DEVICE_SIGNED:
            return None
        entry = self.directory.entry(dt.dev)
        if not entry.known or entry.revoked or entry.key is None:
            return None
        return Route(dt.dev, dt.channel.value, dt.pipe, entry.key)

    def judge(self, topic: str, payload: bytes, t_received: int, now: float) -> Outcome:
        def reject(verdict: Verdict, reason: str, dev: str | None = None) -> Rejected:
            return Rejected(topic, dev, verdict, reason, payload, t_received)

        try:
            dt = self._topic(topic)
        except InvalidTopic as e:
            return reject(Verdict.TOPIC_MISMATCH, str(e))
        dev = dt.dev
        if dt.fleet != self.fleet:
            return reject(Verdict.TOPIC_MISMATCH, f"topic of fleet {dt.fleet!r}, not {self.fleet!r}", dev)
        if len(payload) > MAX_ENVELOPE_BYTES:
            return reject(Verdict.TOO_LARGE, f"{len(payload)} bytes exceed {MAX_ENVELOPE_BYTES}", dev)
        if dt.channel is Channel.STATE:
            return self._state(dev, payload, t_received, reject)
        if dt.channel not in DEVICE_SIGNED:
            return reject(Verdict.TOPIC_MISMATCH, f"the collector takes no {dt.channel.value} messages", dev)
        entry = self.directory.entry(dev)
        if not entry.known:
            return reject(Verdict.UNKNOWN_DEVICE, f"device {dev} is not in the registry", dev)
        if entry.revoked:
            return reject(Verdict.REVOKED, f"device {dev} is revoked", dev)
        if entry.key is None and not self._is_claim(payload):
            entry = self.directory.entry(dev, fresh=True)  # another collector may have bound it
        if entry.key is not None:
            item = (dev, dt.channel.value, dt.pipe, entry.key, payload)
            answer = verify_bound(self.fleet, item, self._verifiers)
            return self.conclude(topic, dev, answer, payload, t_received=t_received, now=now)
        try:
            opened, enrol = self._open_claim(dev, entry, payload)
        except EnvelopeError as e:
            return reject(e.verdict, e.reason, dev)
        answer = check_opened(opened, dev, dt.channel.value, dt.pipe, None)
        return self.conclude(topic, dev, answer, payload, t_received=t_received, now=now, enrol=enrol)

    def conclude(
        self,
        topic: str,
        dev: str,
        answer: Answer,
        payload: bytes,
        *,
        t_received: int,
        now: float,
        enrol: bytes | None = None,
    ) -> Outcome:
        """The chain (and enrolment) for a message whose signature and payload were checked: ``answer``
        is what :func:`~fleet_cli.collector.verify_worker.verify_bound` or ``check_opened`` said about it."""
        if type(answer) is Refused:
            return Rejected(topic, dev, Verdict(answer.verdict), answer.reason, payload, t_received)
        v = cast("Verified", answer)
        boot, seq, gap = v.boot, v.seq, v.gap
        decision = self.chain.observe(Link(dev, boot, seq, v.prev, v.msg_id), now, gap[:3] if gap else None)
        verdict = decision.verdict
        if verdict is Verdict.DUPLICATE:
            return Duplicate(dev, boot)
        if verdict is not Verdict.ACCEPTED:
            log.warning("%s from %s boot %d seq %d: %s", verdict.value, dev, boot, seq, decision.reason)
            return Rejected(topic, dev, verdict, decision.reason, payload, t_received)
        if decision.late:
            self.late += 1
        if enrol is not None:
            try:
                self.directory.bind(dev, enrol)
            except ConflictError as e:
                return Rejected(topic, dev, Verdict.CLAIM_INVALID, str(e), payload, t_received)
            log.info("device %s enrolled by its claim", dev)
        return Candidate(dev, t_received, payload, *v)

    @staticmethod
    def _is_claim(payload: bytes) -> bool:
        try:
            o = decode_unverified(payload)
        except EnvelopeError:
            return False
        return o.kind is Kind.BIRTH and Key.CLAIM in o.payload

    def _open_claim(self, dev: str, entry: DeviceEntry, payload: bytes) -> tuple[Opened, bytes]:
        o = decode_unverified(payload)  # MALFORMED / TOO_LARGE before anything else
        if o.kind is not Kind.BIRTH or Key.CLAIM not in o.payload:
            raise EnvelopeError(
                Verdict.UNKNOWN_KEY, f"device {dev} has no key bound yet (waiting for its first birth)"
            )
        key = bytes(o.payload[Key.KEY])
        if entry.claim_token is None:
            raise EnvelopeError(Verdict.CLAIM_INVALID, f"device {dev} has no pending claim token")
        if not hmac.compare_digest(claim_tag(entry.claim_token, key, dev), bytes(o.payload[Key.CLAIM])):
            raise EnvelopeError(Verdict.CLAIM_INVALID, "claim does not match the device's claim token")
        return open_envelope(payload, self.fleet, key), key

    def _state(self, dev: str, payload: bytes, t_received: int, reject: Callable[..., Rejected]) -> Outcome:
        """An advisory state message (docs/protocol.md §5): unsigned, so it counts only for a registered,
        unrevoked device, and only in the documented form; anything else is quarantined (bounded)."""
        entry = self.directory.entry(dev)
        if not entry.known:
            return reject(Verdict.UNKNOWN_DEVICE, f"state of device {dev}, which is not in the registry", dev)
        if entry.revoked:
            return reject(Verdict.REVOKED, f"state of device {dev}, which is revoked", dev)
        try:
            st = parse_state(payload)
        except StateError as e:
            return reject(Verdict.MALFORMED, str(e), dev)
        return StateUpdate(dev, st.presence.value, st.boot, st.t, t_received)
