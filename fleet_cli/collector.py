"""The collector: receive device messages over MQTT, verify, store, acknowledge (docs/collector.md;
docs/protocol.md §4 to §6).

Threads and hand-offs (docs/field-notes.md "paho-mqtt 2.x": one network thread, never block in a callback):

    paho network thread --on_message--> queue --> worker thread: verify, chain, batch,
                                                  commit, PUBACK, acks, republish

* The worker alone touches the chain verifier, the store and the registry cache.
* PUBACKs are sent by the worker *after* the batch holding the message has committed
  (``manual_ack``): a message the collector has not stored stays in the broker's persistent session.
  The broker's in-flight window (MQTT 5 Receive Maximum :data:`~fleet_cli.mqtt.RECEIVE_MAXIMUM`,
  Mosquitto ``max_inflight_messages`` for 3.1.1) therefore bounds the queue: a slow worker slows the
  broker down instead of dropping anything. The queue's own bound (:data:`QUEUE_MAX`) is the 16-bit
  packet-id space, which no broker can exceed for QoS 1; QoS 0 messages (none are expected) are
  dropped and counted once it is full.
* Verification of one message, in this order: size (TOO_LARGE), topic (TOPIC_MISMATCH), device in the
  registry (UNKNOWN_DEVICE), revoked (REVOKED), key — the bound key, or for an unbound device a birth
  whose claim matches the one-time token (CLAIM_INVALID), signature and strict decoding
  (UNKNOWN_KEY / BAD_SIGNATURE / MALFORMED, by :func:`edge_protocol.envelope.open_envelope`), payload
  ``dev`` and kind against the topic (TOPIC_MISMATCH), then the chain (DUPLICATE, EQUIVOCATION, FORK).
  The store re-checks each candidate against stored neighbours in the commit transaction, so several
  collectors sharing one store (``--share``) agree whatever the order and split.
* Acks (docs/protocol.md §5) say "every seq <= N of this boot is stored": N is the store's contiguous head of
  (dev, boot) after the commit (seqs the device itself reported dropped count as covered; seqs only
  reported missing by the reorder timeout do not, so the device keeps resending them). At most one ack
  per (dev, boot) every ``ack_interval_s``; a DUPLICATE (the device resending because an ack was lost)
  triggers a fresh ack.
* DUPLICATE is counted (per device in the store, per collector in the stats), not quarantined: the
  stored copy is byte-for-byte the same payload.
* The quarantine holds at most ``quarantine_max`` rows (:data:`~fleet_cli.store.QUARANTINE_MAX_ROWS`);
  the store evicts the oldest rows of the devices holding the most and counts them per verdict. The
  first eviction of a run is logged once as a warning; the count is in the stats and the metrics.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from edge_protocol.chain import ChainVerifier, GapReport, Head, Link
from edge_protocol.envelope import (
    MAX_ENVELOPE_BYTES,
    EnvelopeError,
    Opened,
    Verdict,
    decode_unverified,
    open_envelope,
    seal,
)
from edge_protocol.errors import InvalidTopic
from edge_protocol.keys import Signer, claim_tag
from edge_protocol.payload import Key, Kind
from edge_protocol.state import StateError, parse_state
from edge_protocol.topics import (
    DEVICE_PUBLISHES,
    DEVICE_SIGNED,
    Channel,
    DeviceTopic,
    agg_topic,
    channel_filter,
    device_topic,
    fleet_prefix,
    parse_topic,
    verified_topic,
)
from fleet_cli.aggregate import device_online, percentile
from fleet_cli.errors import FleetError
from fleet_cli.mqtt import RECEIVE_MAXIMUM, MqttSettings
from fleet_cli.mqtt import Link as MqttLink
from fleet_cli.mqtt import Protocol as MqttProtocol
from fleet_cli.registry import ConflictError, NotFoundError, Registry
from fleet_cli.store import (
    QUARANTINE_MAX_ROWS,
    Batch,
    Candidate,
    CommitResult,
    GapRange,
    QuarantineCount,
    Rejected,
    StateUpdate,
    Store,
)
from fleet_cli.terminal import escape
from fleet_cli.verify_worker import (
    Answer,
    Item,
    Refused,
    Verified,
    Verifiers,
    VerifyPool,
    check_opened,
    verify_bound,
)

log = logging.getLogger(__name__)

# A broker can have at most 65,535 QoS 1 deliveries unacknowledged towards one client (16-bit packet
# ids, MQTT §2.2.1), and the collector acknowledges only after storing: the queue never holds more.
QUEUE_MAX = 65_535
# docs/collector.md "Acks and back-pressure": commit every 500 messages or 50 ms, whichever comes first, and
# at once when the queue runs dry (a lone message is not kept waiting; PUBACKs wait for the commit).
BATCH_MAX_MESSAGES = 500
BATCH_MAX_DELAY_S = 0.05
# A seq missing this long is reported as a GAP (docs/protocol.md §6). Agents resend unacked results after
# their own timeout (tens of seconds), so anything shorter reports gaps that heal moments later.
REORDER_TIMEOUT_S = 30.0
# At most one ack per (dev, boot) this often: with a device sending 10 results/s an ack covers ~2.
ACK_INTERVAL_S = 0.2
# Retained aggregates on P/_fleet/agg/summary.
AGG_INTERVAL_S = 10.0
# How often the worker logs throughput and verdict counts.
LOG_INTERVAL_S = 30.0
# How often the chain verifier is asked for expired gaps.
EXPIRE_INTERVAL_S = 1.0
# Registry answers (revoked? bound key?) are cached this long: a revocation takes effect within it.
REGISTRY_RECHECK_S = 5.0
# Registry answers kept at most for this many device ids: ids named on the device topics are not all
# registered ones (anyone with write access can invent them), so the cache is bounded, and cleared
# when full (a fleet this size re-reads a few entries; each read is one indexed SQLite lookup).
DIRECTORY_CACHE = 65_536
# Distinct labels counted per device in the stats and the retained aggregate: a device chooses its
# labels, so beyond this many further ones are counted under OTHER_LABEL.
MAX_LABELS_PER_DEVICE = 64
OTHER_LABEL = "(other)"
# Latency samples (t_received - t_device of results) kept for p50/p95.
LATENCY_SAMPLES = 10_000
# Window over which msgs/s is measured.
RATE_WINDOW_S = 10.0
# Signature checks and strict decoding run in this many worker processes (0: in the collector's own
# worker thread). One is right for the 2-core target: paho's network thread and the store share one
# core (one GIL), the signatures (~41 µs each with PyNaCl, the largest cost) get the other.
VERIFY_WORKERS = 1
# Messages sent to a verify worker at once. Big enough that the pickling and pipe round trip (~50 µs)
# is ~1 µs per message; small next to Mosquitto's max_inflight_messages (100 in the rendered config)
# so that verifying starts while the rest of the window is still arriving.
CHUNK_MAX_MESSAGES = 64
# Queue items the worker takes at once before its per-iteration bookkeeping (deadlines, batch, acks).
BURST_MAX = 256
# Stopping: how long the worker waits for chunks still at the verify workers before it commits what
# it has (what is not back by then is not PUBACKed, so the broker keeps it). Below stop()'s 5 s.
STOP_DRAIN_S = 3.0
# The chain verifier keeps this many seqs below each boot's contiguous head in memory; older ones are
# looked up in the store when needed (a resend of an old message). Bounds the collector's memory for
# a long-running fleet; 1024 is ~17 min of a device sending one message a second.
CHAIN_KEEP_RECENT = 1024

# Device channels the collector subscribes to: all a device publishes; never cmd/ack, never _fleet/.
SUBSCRIBED = tuple(channel_filter(c) for c in DEVICE_PUBLISHES)


class CollectorError(FleetError):
    """The collector cannot run (store, broker) or stopped on an error."""


# ---- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectorConfig:
    fleet: str
    store_path: Path
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None  # secret: not shown by repr
    tls_ca: Path | None = None
    protocol: MqttProtocol = MqttProtocol.AUTO
    client_id: str = ""  # "" = derived from the username (brokers with use_username_as_clientid ignore it)
    share_group: str | None = None  # subscribe through $share/GROUP/...
    batch_max_messages: int = BATCH_MAX_MESSAGES
    batch_max_delay_s: float = BATCH_MAX_DELAY_S
    reorder_timeout_s: float = REORDER_TIMEOUT_S
    ack_interval_s: float = ACK_INTERVAL_S
    publish_verified: bool = True
    agg_interval_s: float = AGG_INTERVAL_S
    log_interval_s: float = LOG_INTERVAL_S
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    receive_maximum: int = RECEIVE_MAXIMUM
    verify_workers: int = VERIFY_WORKERS  # processes verifying signatures; 0 = in the worker thread
    chain_keep_recent: int = CHAIN_KEEP_RECENT
    quarantine_max: int = QUARANTINE_MAX_ROWS  # rows; the store evicts (and counts) beyond it

    def __repr__(self) -> str:
        return (
            f"CollectorConfig(fleet={self.fleet!r}, store={str(self.store_path)!r},"
            f" broker={self.host}:{self.port}, user={self.username!r}, share={self.share_group!r})"
        )

    def mqtt_settings(self) -> MqttSettings:
        client_id = self.client_id or f"fleet-collector-{self.username or 'anon'}"
        return MqttSettings(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            tls_ca=self.tls_ca,
            protocol=self.protocol,
            client_id=client_id,
            persistent=True,
        )

    def filters(self) -> list[str]:
        p = fleet_prefix(self.fleet)
        share = f"$share/{self.share_group}/" if self.share_group else ""
        return [f"{share}{p}/+/{c}" for c in SUBSCRIBED]


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
    """A message that needs only :func:`~fleet_cli.verify_worker.verify_bound` before the chain: the
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
    runs :func:`~fleet_cli.verify_worker.verify_bound`, and :meth:`conclude` (in order) runs the chain.
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
        is what :func:`~fleet_cli.verify_worker.verify_bound` or ``check_opened`` said about it."""
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


# ---- statistics -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectorStats:
    accepted: int
    rejected: dict[str, int]  # verdict -> count (DUPLICATE not included)
    duplicates: int
    stored_by_device: dict[str, int]
    labels_by_device: dict[str, dict[str, int]]
    gaps: int  # seqs reported missing after the reorder timeout (and still missing from the store)
    late: int  # messages accepted after their seq had been reported as a gap
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    msgs_per_s: float
    batches: int
    queue_depth: int
    online: int
    dropped_qos0: int
    quarantine_evicted: int  # quarantine rows this collector's commits evicted (the bound)
    error: str | None
    # Every message taken from the broker is one of: accepted, a duplicate, rejected (quarantined:
    # received == accepted + duplicates + sum(rejected) + states once idle), or an applied state.
    received: int = 0
    states: int = 0  # advisory state messages applied
    internal_errors: int = 0  # messages whose handling raised; each was still quarantined

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "duplicates": self.duplicates,
            "stored_by_device": dict(self.stored_by_device),
            "labels_by_device": {k: dict(v) for k, v in self.labels_by_device.items()},
            "gaps": self.gaps,
            "late": self.late,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p95": self.latency_ms_p95,
            "msgs_per_s": self.msgs_per_s,
            "batches": self.batches,
            "queue_depth": self.queue_depth,
            "online": self.online,
            "dropped_qos0": self.dropped_qos0,
            "quarantine_evicted": self.quarantine_evicted,
            "error": self.error,
            "received": self.received,
            "states": self.states,
            "internal_errors": self.internal_errors,
        }


@dataclass
class _Counters:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    by_device: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    gaps: int = 0
    batches: int = 0
    dropped_qos0: int = 0
    quarantine_evicted: int = 0
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    rate_marks: deque[tuple[float, int]] = field(default_factory=deque)
    states: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    boots: dict[str, int] = field(default_factory=dict)
    received: int = 0
    states_applied: int = 0
    internal_errors: int = 0

    def online(self) -> int:
        """Devices that count as online by :func:`edge_protocol.state.online`."""
        return sum(
            device_online({"state": state, "boot": boot}, self.boots.get(dev)) == "online"
            for dev, (state, boot) in self.states.items()
        )


# ---- the collector --------------------------------------------------------------------------


def _merge(results: list[CommitResult]) -> CommitResult:
    """Several commits' results as one (heads: the last one of each (dev, boot))."""
    heads = {(h.dev, h.boot): h for r in results for h in r.heads}
    quarantine = next((r.quarantine for r in reversed(results) if r.quarantine is not None), None)
    return CommitResult(
        [c for r in results for c in r.stored],
        [c for r in results for c in r.conflicts],
        [c for r in results for c in r.duplicates],
        list(heads.values()),
        [g for r in results for g in r.gaps],
        quarantine,
    )


_STOP = object()

Raw = tuple[str, bytes, int, int, int]  # topic, payload, mid, qos, t_received (ms)


class _Answers:
    """A verify worker's answers to one chunk (None: the worker died with it)."""

    __slots__ = ("answers", "chunk_id")

    def __init__(self, chunk_id: int, answers: list[Answer] | None) -> None:
        self.chunk_id = chunk_id
        self.answers = answers


class _Chunk:
    """Messages taken in arrival order; those with a route wait for a verify worker's answers."""

    __slots__ = ("answers", "lost", "raws", "ready", "routes")

    def __init__(self) -> None:
        self.raws: list[Raw] = []
        self.routes: list[Route | None] = []
        self.answers: list[Answer] = []
        self.ready = False
        self.lost = False


class Collector:
    """Verify, store and acknowledge; see the module docstring."""

    def __init__(
        self,
        config: CollectorConfig,
        registry: Registry,
        collector_signer: Signer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._registry = registry
        self._signer = collector_signer
        self._clock = clock
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._c = _Counters()
        self._accepting = False
        self._worker: threading.Thread | None = None
        self._link: MqttLink | None = None
        self._store: Store | None = None
        self._intake: Intake | None = None
        self._pool: VerifyPool | None = None
        self._in_pipeline = 0  # taken from the queue, not yet decided (chunks at the verify workers)
        self._error: str | None = None
        self._done = threading.Event()
        self._ack_due: dict[tuple[str, int], int] = {}  # (dev, boot) -> seq to ack
        self._ack_last: dict[tuple[str, int], float] = {}  # (dev, boot) -> when the last ack went
        self._metrics: Any = None
        self._metrics_server: Any = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store, restore the chain, connect and subscribe; returns once subscribed."""
        cfg = self.config
        store = Store(cfg.store_path, quarantine_max=cfg.quarantine_max)
        chain = ChainVerifier(cfg.reorder_timeout_s, recall=store.recall, keep_recent=cfg.chain_keep_recent)
        for dev, heads in store.restore_heads().items():
            chain.restore(dev, [Head(b, s, m) for b, s, m in heads])
        for d in store.devices():
            self._c.boots[d["dev"]] = d["boot"]
        for dev, st in store.states().items():
            self._c.states[dev] = (st["state"], st["boot"])
        self._store = store
        self._intake = Intake(cfg.fleet, RegistryDirectory(self._registry, self._clock), chain)
        if cfg.verify_workers > 0:
            self._pool = VerifyPool(
                cfg.fleet, cfg.verify_workers, lambda i, a: self._queue.put(_Answers(i, a))
            )
        if cfg.metrics_port is not None:
            from fleet_cli.metrics import CollectorMetrics

            totals = QuarantineCount.sum(store.quarantine_tally().values())
            self._metrics = CollectorMetrics(
                quarantine_kept=totals.kept,
                quarantine_evicted=totals.evicted,
                quarantine_max=cfg.quarantine_max,
            )
            self._metrics_server = self._metrics.serve(cfg.metrics_port, cfg.metrics_addr)
        self._link = MqttLink(
            cfg.mqtt_settings(),
            subscriptions=cfg.filters(),
            on_raw=self._on_message,
            manual_ack=True,
            receive_maximum=cfg.receive_maximum,
        )
        self._accepting = True
        self._worker = threading.Thread(target=self._run, name="collector-worker", daemon=True)
        self._worker.start()
        try:
            self._link.connect()
        except BaseException:
            self._accepting = False
            self._queue.put(_STOP)
            self._worker.join()
            self._close_resources()
            raise
        log.info(
            "collecting fleet %s from %s:%d (MQTT %s%s)",
            cfg.fleet,
            cfg.host,
            cfg.port,
            self._link.protocol,
            f", shared group {cfg.share_group}" if cfg.share_group else "",
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking messages, commit the batch, PUBACK and ack what is stored, disconnect."""
        self._accepting = False
        worker = self._worker
        if worker is not None and worker.is_alive():
            self._queue.put(_STOP)
            worker.join(timeout)
            if worker.is_alive():
                log.error("the collector's worker did not finish within %.1f s", timeout)
        self._close_resources()

    def _close_resources(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def run_forever(self) -> None:
        """Run until SIGTERM/SIGINT (or a fatal error); then stop cleanly. For ``fleet collect``."""
        stop = threading.Event()

        def handler(signum: int, frame: object) -> None:
            stop.set()

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop.is_set() and not self._done.is_set():
                stop.wait(0.2)
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)
        if self._error is not None:
            raise CollectorError(f"the collector stopped: {self._error}")

    @property
    def failed(self) -> str | None:
        return self._error

    def chain_entries(self) -> int:
        """How many (boot, seq) the chain verifier holds in memory, all devices together (bounded by
        :data:`CHAIN_KEEP_RECENT` per device and boot)."""
        intake = self._intake
        if intake is None:
            return 0
        chain = intake.chain
        return sum(len(chain.snapshot(dev)) for dev in list(chain.devices()))

    # -- intake (paho's network thread: never block) ----------------------------------------------

    def _on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        if not self._accepting:
            return  # not PUBACKed: it stays in the persistent session for the next start
        if self._queue.qsize() >= QUEUE_MAX:
            if qos == 0:
                with self._lock:
                    self._c.dropped_qos0 += 1
            else:  # cannot happen (see QUEUE_MAX); not PUBACKed, so redelivered after a reconnect
                log.error("collector queue full; message left unacknowledged at the broker")
            return
        self._queue.put((topic, payload, mid, qos, time.time_ns() // 1_000_000))

    # -- worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a broken store or broker: stop, never ack what was not stored
            log.exception("collector worker failed")
            self._error = str(e) or type(e).__name__
        finally:
            self._done.set()

    def _loop(self) -> None:
        cfg = self.config
        clock = self._clock
        q = self._queue
        assert self._intake is not None
        intake = self._intake
        batch = Batch()
        mids: list[tuple[int, int]] = []
        started: float | None = None
        pending: deque[_Chunk] = deque()  # in arrival order
        waiting: dict[int, _Chunk] = {}  # chunk id -> chunk at a verify worker
        building = _Chunk()
        next_id = 0
        workers = cfg.verify_workers if self._pool is not None else 0
        next_expire = clock() + EXPIRE_INTERVAL_S
        next_agg = clock() + cfg.agg_interval_s
        next_log = clock() + cfg.log_interval_s

        def dispatch() -> None:
            nonlocal building, next_id
            chunk, building = building, _Chunk()
            items: list[Item] = [
                (r.dev, r.channel, r.pipe, r.key, raw[1])
                for raw, r in zip(chunk.raws, chunk.routes, strict=True)
                if r is not None
            ]
            pending.append(chunk)
            if not items or self._pool is None:
                chunk.ready = True
                return
            waiting[next_id] = chunk
            self._pool.submit(next_id, items)
            next_id += 1

        def answered(a: _Answers) -> None:
            nonlocal workers
            chunk = waiting.pop(a.chunk_id)
            chunk.ready = True
            if a.answers is None:
                chunk.lost = True
                if workers:
                    log.error(
                        "a verify worker exited; verifying in the collector's worker thread from now on"
                    )
                    workers = 0
            else:
                chunk.answers = a.answers

        stopping = False
        while True:
            now = clock()
            deadlines = [next_expire, next_agg, next_log]
            if started is not None:
                deadlines.append(started + cfg.batch_max_delay_s)
            if self._ack_due:
                deadlines.append(
                    min(self._ack_last.get(k, -math.inf) for k in self._ack_due) + cfg.ack_interval_s
                )
            timeout = max(0.0, min(deadlines) - now)
            try:
                items = [q.get(timeout=timeout) if timeout > 0 else q.get_nowait()]
            except queue.Empty:
                items = []
            # Take what else is queued already (up to a burst), so that the bookkeeping below runs once
            # per burst rather than once per message.
            with contextlib.suppress(queue.Empty):
                while items and len(items) < BURST_MAX:
                    items.append(q.get_nowait())
            for item in items:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Answers):
                    answered(item)  # also after _STOP: the drain below waits for these
                elif stopping:
                    pass  # taken after _STOP: not PUBACKed, so the broker keeps it for the next start
                elif type(item) is tuple:
                    raw = cast("Raw", item)
                    building.raws.append(raw)
                    building.routes.append(intake.route(raw[0], raw[1]) if workers else None)
                    self._in_pipeline += 1
                    if len(building.raws) >= CHUNK_MAX_MESSAGES:
                        dispatch()
            if stopping:
                break
            # A partial chunk goes when nothing else is waiting and a verify worker is idle (or there
            # is none): low latency when it is quiet, full chunks when it is busy.
            if building.raws and q.empty() and len(waiting) < max(workers, 1):
                dispatch()
            now = clock()
            while pending and pending[0].ready:
                chunk = pending.popleft()
                self._decide(chunk, now, batch, mids)
                if started is None and chunk.raws:
                    started = now
            if now >= next_expire:
                next_expire = now + EXPIRE_INTERVAL_S
                for g in intake.chain.expire(now):
                    batch.timeout_gaps.append(GapRange(g.dev, g.boot, g.first, g.last))
                if batch.timeout_gaps and started is None:
                    started = now
            if started is not None and (
                len(mids) >= cfg.batch_max_messages
                or now - started >= cfg.batch_max_delay_s
                or (q.empty() and not pending and not building.raws)
            ):
                self._flush(batch, mids)
                batch, mids, started = Batch(), [], None
            self._send_acks(force=False)
            if now >= next_agg:
                next_agg = now + cfg.agg_interval_s
                self._publish_aggregates()
            if now >= next_log:
                next_log = now + cfg.log_interval_s
                self._log_progress()
        # Stopping: whatever was taken is decided, committed, PUBACKed and acked before the disconnect;
        # chunks the verify workers do not answer in time are left to the broker (never PUBACKed).
        assert stopping
        if building.raws:
            dispatch()
        deadline = clock() + STOP_DRAIN_S
        while waiting and (left := deadline - clock()) > 0:
            try:
                item = q.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(item, _Answers):
                answered(item)
        now = clock()
        while pending and pending[0].ready:
            self._decide(pending.popleft(), now, batch, mids)
        if pending:
            log.warning(
                "stopping: %d messages not verified in time stay with the broker",
                sum(len(c.raws) for c in pending),
            )
        if not batch.empty() or mids:
            self._flush(batch, mids)
        self._send_acks(force=True)
        self._publish_aggregates()
        self._log_progress()

    def _decide(self, chunk: _Chunk, now: float, batch: Batch, mids: list[tuple[int, int]]) -> None:
        """Finish every message of a chunk, in arrival order, into ``batch``."""
        assert self._intake is not None
        intake = self._intake
        answers = iter(chunk.answers)
        for raw, route in zip(chunk.raws, chunk.routes, strict=True):
            topic, payload, mid, qos, t_rx = raw
            answer = next(answers) if route is not None and not chunk.lost else None
            try:
                if route is None or answer is None:
                    outcome = intake.judge(topic, payload, t_rx, now)
                else:
                    outcome = intake.conclude(topic, route.dev, answer, payload, t_received=t_rx, now=now)
            except Exception as e:  # no single message may stop the collector (docs/reliability.md)
                outcome = self._internal_error(topic, payload, t_rx, "verifying it", e)
            self._take(outcome, batch)
            if qos > 0:
                mids.append((mid, qos))
        with self._lock:
            self._c.received += len(chunk.raws)
        self._in_pipeline -= len(chunk.raws)

    def _internal_error(self, topic: str, payload: bytes, t_rx: int, doing: str, e: Exception) -> Rejected:
        """A message whose handling raised: quarantined as MALFORMED with the error, and counted. The
        first one of a run is logged with its traceback, later ones in one line each."""
        self._count_error(f"{doing} (a message on {_sanitize(topic)})", e)
        reason = f"internal error while {doing}: {type(e).__name__}: {e}"[:500]
        try:
            dev: str | None = parse_topic(topic).dev
        except Exception:
            dev = None
        return Rejected(topic, dev, Verdict.MALFORMED, reason, payload, t_rx)

    def _take(self, outcome: Outcome, batch: Batch) -> None:
        if isinstance(outcome, Candidate):
            batch.candidates.append(outcome)
        elif isinstance(outcome, Duplicate):
            batch.duplicates[outcome.dev] = batch.duplicates.get(outcome.dev, 0) + 1
            batch.touched.add((outcome.dev, outcome.boot))
        elif isinstance(outcome, StateUpdate):
            batch.states.append(outcome)
        else:
            if outcome.verdict not in (Verdict.EQUIVOCATION, Verdict.FORK):
                log.info(
                    "quarantined %s on %s: %s",
                    outcome.verdict.value,
                    _sanitize(outcome.topic),
                    _sanitize(outcome.reason, 200),
                )
            batch.rejected.append(outcome)

    def _flush(self, batch: Batch, mids: list[tuple[int, int]]) -> None:
        assert self._store is not None
        assert self._link is not None
        t0 = time.perf_counter()
        try:
            result = self._store.commit(batch)
        except Exception as e:
            result = self._commit_apart(batch, e)
        elapsed = time.perf_counter() - t0
        # only now: the messages are stored (or quarantined)
        self._link.ack_many([mid for mid, qos in mids if qos == 1])
        for mid, qos in mids:
            if qos > 1:
                self._link.ack(mid, qos)
        self._account(batch, result, elapsed)
        for h in result.heads:  # something arrived for each: new messages, or a resend wanting an ack
            self._ack_due[(h.dev, h.boot)] = h.seq
        if self.config.publish_verified:
            for c in result.stored:
                if c.kind == Kind.RESULT:
                    try:
                        self._publish_verified(c)
                    except Exception as e:  # the result is stored; only its republication is lost
                        self._count_error(f"republishing {c.dev} boot {c.boot} seq {c.seq}", e)

    def _count_error(self, doing: str, e: Exception) -> None:
        """Count an exception that one message caused (stats, metrics); log the first of a run with its
        traceback, later ones in a line each."""
        with self._lock:
            self._c.internal_errors += 1
            first = self._c.internal_errors == 1
        if self._metrics is not None:
            self._metrics.internal_errors.inc()
        log.error("internal error while %s: %s: %s", doing, type(e).__name__, _sanitize(str(e), 200),
                  exc_info=first)  # fmt: skip

    def _commit_apart(self, batch: Batch, error: Exception) -> CommitResult:
        """The batch's transaction failed: commit its parts one by one, so that one message the store
        cannot take (whatever the reason) is quarantined instead of stopping the collector. If even the
        quarantine row of a part cannot be written, the store itself is failing: raise, so that nothing
        is PUBACKed (the broker keeps it all for the next start)."""
        assert self._store is not None
        store = self._store
        log.warning("a batch of %d messages failed to commit (%s: %s); committing them one by one",
                    len(batch), type(error).__name__, _sanitize(str(error), 200))  # fmt: skip
        results: list[CommitResult] = []
        parts: list[tuple[Batch, Rejected | None]] = [
            (Batch(candidates=[c]), Rejected("", c.dev, Verdict.MALFORMED, "", c.cose, c.t_received))
            for c in batch.candidates
        ]
        parts += [(Batch(rejected=[r]), None) for r in batch.rejected]
        parts += [(Batch(states=[st]), None) for st in batch.states]
        parts += [(Batch(timeout_gaps=[g]), None) for g in batch.timeout_gaps]
        parts.append((Batch(duplicates=dict(batch.duplicates), touched=set(batch.touched)), None))
        for part, fallback in parts:
            try:
                results.append(store.commit(part))
                continue
            except Exception as e:
                what = f"storing {part.candidates[0].dev}" if part.candidates else "storing a batch part"
                if fallback is None:  # advisory parts (state, timeout gaps, counters): counted, dropped
                    if part.rejected:
                        raise  # a quarantine row the store cannot write: the store is failing
                    self._count_error(what, e)
                    continue
                self._count_error(what, e)
                reason = f"the store refused it: {type(e).__name__}: {e}"[:500]
                quarantined = Rejected(fallback.topic, fallback.dev, fallback.verdict, reason,
                                       fallback.cose, fallback.t_received)  # fmt: skip
                done = store.commit(Batch(rejected=[quarantined]))  # raises if the store is failing
                # a conflict: counted as rejected like the store's own refusals
                results.append(CommitResult([], [quarantined], [], done.heads, [], done.quarantine))
        return _merge(results)

    def _account(self, batch: Batch, result: CommitResult, elapsed: float) -> None:
        now = self._clock()
        with self._lock:
            c = self._c
            c.batches += 1
            c.accepted += len(result.stored)
            for s in result.stored:
                c.by_device[s.dev] = c.by_device.get(s.dev, 0) + 1
                if s.boot > c.boots.get(s.dev, -1):
                    c.boots[s.dev] = s.boot
                if s.kind == Kind.RESULT:
                    c.latency.append(float(s.t_received - s.t_device))
                    if s.label is not None:
                        labels = c.labels.setdefault(s.dev, {})
                        label = s.label
                        if label not in labels and len(labels) >= MAX_LABELS_PER_DEVICE:
                            label = OTHER_LABEL
                        labels[label] = labels.get(label, 0) + 1
            for r in [*batch.rejected, *result.conflicts]:
                c.rejected[r.verdict.value] = c.rejected.get(r.verdict.value, 0) + 1
            c.duplicates += sum(batch.duplicates.values()) + len(result.duplicates)
            evicted = sum(result.quarantine.evicted_now.values()) if result.quarantine else 0
            first_eviction = evicted > 0 and c.quarantine_evicted == 0
            c.quarantine_evicted += evicted
            c.gaps += sum(g.last - g.first + 1 for g in result.gaps)
            c.states_applied += len(batch.states)
            for st in batch.states:
                c.states[st.dev] = (st.state, st.boot)
            c.rate_marks.append((now, c.accepted))
            while len(c.rate_marks) > 2 and now - c.rate_marks[0][0] > RATE_WINDOW_S:
                c.rate_marks.popleft()
            online = c.online()
        if first_eviction:  # once per run: a flood would otherwise log a line per batch
            log.warning(
                "quarantine full (%d rows): evicting the oldest rows of the devices with the most;"
                " evicted rows are counted per verdict (fleet status)",
                self.config.quarantine_max,
            )
        for g in result.gaps:
            log.warning("gap: %s boot %d seqs %d-%d missing after %.0f s", g.dev, g.boot, g.first, g.last,
                        self.config.reorder_timeout_s)  # fmt: skip
        if self._metrics is not None:
            self._metrics.observe_batch(
                batch, result, elapsed, online, self._queue.qsize() + self._in_pipeline
            )

    def _send_acks(self, *, force: bool) -> None:
        if not self._ack_due or self._link is None:
            return
        now = self._clock()
        interval = self.config.ack_interval_s
        for key, seq in list(self._ack_due.items()):
            if not force and now - self._ack_last.get(key, -math.inf) < interval:
                continue
            dev, boot = key
            payload: dict[int, object] = {
                Key.V: 1,
                Key.DEV: dev,
                Key.BOOT: boot,
                Key.SEQ: seq,
                Key.T: time.time_ns() // 1_000_000,
                Key.KIND: int(Kind.ACK),
            }
            del self._ack_due[key]
            self._ack_last[key] = now
            try:
                sealed = seal(payload, self._signer, self.config.fleet)
                self._link.publish(device_topic(self.config.fleet, dev, Channel.ACK), sealed.cose, qos=1)
            except Exception as e:  # never expected (heads come from the store): counted, not fatal
                self._count_error(f"acking {dev} boot {boot}", e)

    def _publish_verified(self, c: Candidate) -> None:
        assert self._link is not None
        assert c.pipe is not None
        head = json.dumps(
            {
                "fleet": self.config.fleet,
                "dev": c.dev,
                "pipe": c.pipe,
                "boot": c.boot,
                "seq": c.seq,
                "t": c.t_device,
                "t_received": c.t_received,
                "msg_id": c.msg_id.hex(),
                "model": c.model.hex() if c.model else None,
                "input": c.input.hex() if c.input else None,
                "verdict": Verdict.ACCEPTED.value,
            },
            separators=(",", ":"),
        )
        body = head[:-1] + ',"out":' + (c.out or "null") + "}"
        self._link.publish(verified_topic(self.config.fleet, c.dev, c.pipe), body, qos=0)

    def _publish_aggregates(self) -> None:
        if self._link is None or not self._link.connected.is_set():
            return
        snap = self.snapshot()
        doc = {
            "fleet": self.config.fleet,
            "t": time.time_ns() // 1_000_000,
            "accepted": snap.accepted,
            "rejected": snap.rejected,
            "duplicates": snap.duplicates,
            "gaps": snap.gaps,
            "online": snap.online,
            "msgs_per_s": round(snap.msgs_per_s, 1),
            "latency_ms_p50": snap.latency_ms_p50,
            "latency_ms_p95": snap.latency_ms_p95,
            "devices": {
                dev: {"accepted": n, "labels": snap.labels_by_device.get(dev, {})}
                for dev, n in sorted(snap.stored_by_device.items())
            },
        }
        self._link.publish(agg_topic(self.config.fleet, "summary"), json.dumps(doc), qos=0, retain=True)

    def _log_progress(self) -> None:
        s = self.snapshot()
        evicted = f", {s.quarantine_evicted} quarantine rows evicted" if s.quarantine_evicted else ""
        log.info(
            "ingest: %d accepted (%.0f/s), rejected %s, %d duplicates, %d gap seqs, queue %d%s",
            s.accepted, s.msgs_per_s, s.rejected or "{}", s.duplicates, s.gaps, s.queue_depth, evicted,
        )  # fmt: skip

    # -- observing --------------------------------------------------------------------------------

    def snapshot(self) -> CollectorStats:
        """A consistent copy of the counters (thread-safe)."""
        with self._lock:
            c = self._c
            lat = sorted(c.latency)
            rate = 0.0
            if len(c.rate_marks) >= 2:
                (t0, n0), (t1, n1) = c.rate_marks[0], c.rate_marks[-1]
                rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
            return CollectorStats(
                accepted=c.accepted,
                rejected=dict(c.rejected),
                duplicates=c.duplicates,
                stored_by_device=dict(c.by_device),
                labels_by_device={k: dict(v) for k, v in c.labels.items()},
                gaps=c.gaps,
                late=self._intake.late if self._intake else 0,
                latency_ms_p50=percentile(lat, 50),
                latency_ms_p95=percentile(lat, 95),
                msgs_per_s=rate,
                batches=c.batches,
                queue_depth=self._queue.qsize() + self._in_pipeline,
                online=c.online(),
                dropped_qos0=c.dropped_qos0,
                quarantine_evicted=c.quarantine_evicted,
                error=self._error,
                received=c.received,
                states=c.states_applied,
                internal_errors=c.internal_errors,
            )

    def wait_idle(self, timeout: float = 10.0, settle_s: float = 0.3) -> bool:
        """Wait until nothing new has been taken for ``settle_s`` (tests, demo). True if idle."""
        deadline = time.monotonic() + timeout
        last = (-1, -1, -1)
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            s = self.snapshot()
            cur = (s.accepted + sum(s.rejected.values()) + s.duplicates, s.batches, s.queue_depth)
            if cur != last:
                last, quiet_since = cur, time.monotonic()
            elif s.queue_depth == 0 and time.monotonic() - quiet_since >= settle_s:
                return True
            time.sleep(0.05)
        return False


__all__ = [
    "Collector",
    "CollectorConfig",
    "CollectorError",
    "CollectorStats",
    "DeviceEntry",
    "Directory",
    "Duplicate",
    "GapReport",
    "Intake",
    "RegistryDirectory",
    "Route",
]
