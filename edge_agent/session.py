"""The MQTT session: one thread owns the paho client and everything it does.

paho-mqtt 2.x keeps its session in memory and has deadlocked when ``publish()`` is called from
several threads while callbacks run (docs/field-notes.md "paho-mqtt 2.x"). So:

* exactly one thread (``edge-agent-mqtt``) creates the client, connects, publishes, and drives the
  socket with paho's external-loop API (``loop_read`` / ``loop_write`` / ``loop_misc``) plus a wake-up
  pipe; no other thread calls paho;
* callbacks only record what happened (they run on that same thread, inside ``loop_read``); the work
  (deleting acked entries, passing commands on) happens after the callback returned;
* other threads hand work in through :meth:`Session.notify` (new sealed entries) and read counters.

Delivery (docs/protocol.md §5):

1. On every CONNACK the state ``online`` (retained) is published, ``cmd`` and ``ack`` are subscribed,
   and every stored entry is sent again in chain order (a fresh paho client each connection: nothing
   stale is replayed behind our back, the outbox is the only truth).
2. At most ``max_inflight`` QoS 1 publishes await a PUBACK (paho's own queue is bounded by the 16-bit
   packet id space and costs ~2 KB per message).
3. ``fleet-ack``: an entry leaves the outbox only when a collector-signed ack covers it; entries still
   stored ``resend_after_s`` after they were last sent are sent again. ``broker-ack``: the PUBACK
   deletes it.
4. Reconnects back off exponentially (``backoff_min_s`` doubling up to ``backoff_max_s``) with ±50 %
   jitter, so a fleet does not reconnect in lock step after a broker restart.
5. MQTT 5 is tried first (``protocol = "auto"``); a broker that refuses it (CONNACK "unsupported
   protocol version"), never answers it, or keeps closing before any CONNACK is tried with MQTT 3.1.1
   (:mod:`edge_agent.mqtt_version` weighs the evidence, so a network fault does not pin 3.1.1).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import random
import select
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent.config import Delivery, MqttConfig
from edge_agent.errors import SessionError
from edge_agent.mqtt_version import Cause, VersionPolicy
from edge_agent.outbox import Entry, Outbox
from edge_protocol.envelope import EnvelopeError, KeyRing, open_envelope
from edge_protocol.mqtt import UNSUPPORTED_PROTOCOL_VERSION
from edge_protocol.payload import Kind
from edge_protocol.state import Presence, encode_state
from edge_protocol.topics import Channel, device_topic

log = logging.getLogger(__name__)

# How long the thread sleeps in select() without socket activity: paho's loop_misc (keepalive PINGREQ,
# timeouts) needs calling about once a second (paho's own loop_forever uses 1 s).
IDLE_S = 1.0
# A CONNACK that does not arrive within 10 s means the broker is stuck; paho's connect timeout is 5 s
# for the TCP part alone.
# Entries read from SQLite per resend page: one page is ~60 KB of envelopes.
RESEND_PAGE = 256
# How often the resend timer and the high-water marks are looked at.
TICK_S = 1.0
# A password file holds one line; more than 4 KiB is not one.
MAX_PASSWORD_BYTES = 4096


class State(str, enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    STOPPED = "stopped"


@dataclass
class SessionCounters:
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    published: int = 0
    pubacks: int = 0
    resends: int = 0  # resend passes (reconnect or timeout)
    acks: int = 0  # collector acks accepted
    bad_acks: int = 0  # acks that failed verification or were for another device
    commands: int = 0  # messages received on cmd
    publish_refused: int = 0  # PUBACKs with an error reason (MQTT 5)
    deleted: int = 0  # outbox entries deleted by acks
    protocol: str = ""
    protocol_fallbacks: int = 0  # attempts switched from MQTT 5 to 3.1.1


@dataclass
class _Events:
    """What callbacks recorded during one loop_read, handled right after it."""

    connack: Any = None
    disconnected: bool = False
    pubacks: list[tuple[int, int]] = field(default_factory=list)  # (mid, reason value)
    messages: list[tuple[str, bytes]] = field(default_factory=list)


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Exponential backoff with ±50 % jitter: lo * 2**attempt capped at hi, times U(0.5, 1.5)."""
    base = min(hi, lo * (2 ** min(attempt, 30)))
    return float(base * rng.uniform(0.5, 1.5))


def _read_password(cfg: MqttConfig) -> str | None:
    if cfg.password_file is None:
        return None
    try:
        with cfg.password_file.open("rb") as f:
            raw = f.read(MAX_PASSWORD_BYTES + 1)
    except OSError as e:
        raise SessionError(f"cannot read mqtt.password_file {cfg.password_file}: {e.strerror or e}") from e
    if len(raw) > MAX_PASSWORD_BYTES:
        raise SessionError(
            f"mqtt.password_file {cfg.password_file} is larger than {MAX_PASSWORD_BYTES} bytes"
        )
    return raw.decode("utf-8", "replace").rstrip("\r\n")


def tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    """The TLS context for the broker (CA, optional client certificate); SessionError if files are bad."""
    if cfg.tls_ca is None:
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.tls_ca))
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    except (OSError, ssl.SSLError) as e:
        raise SessionError(
            f"cannot load TLS files (mqtt.tls_ca / tls_cert / tls_key): {e}",
            hint="the CA is the fleet's ca.crt from the flashing bundle",
        ) from e
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Session:
    """The device's single MQTT connection. ``start()`` runs the thread, ``stop()`` ends it."""

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        fleet: str,
        dev: str,
        boot: int,
        outbox: Outbox,
        delivery: Delivery,
        collector_keys: tuple[bytes, ...] = (),
        on_command: Callable[[bytes], None] = lambda _b: None,
        on_delivered: Callable[[int, int], None] = lambda _b, _s: None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.fleet, self.dev, self.boot = fleet, dev, boot
        self.outbox = outbox
        self.delivery = delivery
        self._ring = KeyRing.of(list(collector_keys))
        self._on_command = on_command
        self._on_delivered = on_delivered
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not crypto)
        self._clock = clock
        self._tls = tls_context(cfg)
        self._password = _read_password(cfg)
        self.state_topic = device_topic(fleet, dev, Channel.STATE)
        self.cmd_topic = device_topic(fleet, dev, Channel.CMD)
        self.ack_topic = device_topic(fleet, dev, Channel.ACK)
        self.counters = SessionCounters()
        self.state = State.DISCONNECTED

        self._version = VersionPolicy(cfg.protocol, clock)
        self._client: Any = None
        self._stop = threading.Event()
        self._flush_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._fresh: deque[Entry] = deque()
        self._events = _Events()
        self._inflight: dict[int, tuple[int, int]] = {}
        self._state_mids: set[int] = set()
        self._sent_high: tuple[int, int] = (-1, -1)  # highest key published on this connection
        self._resend_from: tuple[int, int] | None = None  # a resend pass in progress: next key after this
        self._resend_upto: tuple[int, int] | None = None
        self._marks: deque[tuple[float, tuple[int, int]]] = deque()  # (time, _sent_high at that time)
        self._attempt = 0
        self._next_attempt = 0.0
        self._connecting_since = 0.0
        self._got_connack = False
        self._next_tick = 0.0
        self._warned: set[str] = set()
        self.connected_event = threading.Event()

    # -- the public surface (any thread) --------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edge-agent-mqtt", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """The session thread runs (it reconnects by itself; it only ends on stop or a bug)."""
        return self._thread is not None and self._thread.is_alive()

    def notify(self, entries: list[Entry]) -> None:
        """New entries were committed to the outbox: publish them soon (thread-safe, never blocks)."""
        self._fresh.extend(entries)
        self._wake()

    def stop(self, flush_s: float = 2.0, timeout_s: float = 3.0) -> None:
        """Publish what is stored for up to ``flush_s``, then the offline state, then disconnect."""
        self._flush_deadline = self._clock() + flush_s
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("mqtt thread did not stop within %.1f s", timeout_s)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe already wakes the thread; closed: stopping
            os.write(self._wake_w, b"\0")

    # -- the thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                now = self._clock()
                if self._stop.is_set() and (now >= self._flush_deadline or self._flushed()):
                    break
                if self.state is State.DISCONNECTED:
                    if self._stop.is_set():
                        break
                    if now >= self._next_attempt:
                        self._connect()
                    else:
                        self._wait(min(self._next_attempt - now, IDLE_S), None)
                    continue
                self._step(now)
            self._goodbye()
        except Exception:  # the thread must not die silently: log, and leave the outbox to the next start
            log.exception("mqtt session thread failed")
        finally:
            self.state = State.STOPPED
            self.connected_event.clear()

    def _flushed(self) -> bool:
        if self.state is not State.CONNECTED:
            return True
        return not self._fresh and self._resend_from is None and not self._inflight

    def _wait(self, timeout: float, sock: Any) -> tuple[bool, bool]:
        rlist: list[Any] = [self._wake_r]
        wlist: list[Any] = []
        if sock is not None:
            rlist.append(sock)
            if self._client.want_write():
                wlist.append(sock)
            if hasattr(sock, "pending") and sock.pending() > 0:
                timeout = 0.0
        try:
            r, w, _ = select.select(rlist, wlist, [], max(0.0, timeout))
        except (OSError, ValueError, TypeError):
            return (sock is not None, False)
        if self._wake_r in r:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 65536)
        pending = sock is not None and hasattr(sock, "pending") and sock.pending() > 0
        return (sock is not None and (sock in r or pending), sock is not None and sock in w)

    def _step(self, now: float) -> None:
        client = self._client
        sock = client.socket()
        if sock is None:
            self._lost("socket closed")
            return
        busy = self.state is State.CONNECTED and (self._fresh or self._resend_from is not None)
        can_send = len(self._inflight) < self.cfg.max_inflight
        readable, writable = self._wait(0.0 if busy and can_send else IDLE_S, sock)
        rc = 0
        if readable:
            rc = client.loop_read()
        if rc == 0 and (writable or client.want_write()):
            rc = client.loop_write()
        if rc == 0:
            rc = client.loop_misc()
        self._handle_events()
        if rc != 0 or client.socket() is None:
            self._lost(f"paho rc {rc}")
            return
        if self.state is State.CONNECTING and now - self._connecting_since > self.cfg.connect_timeout_s:
            self._lost("no CONNACK in time", cause=Cause.TIMED_OUT)
            return
        if self.state is State.CONNECTED:
            self._pump()
            if now >= self._next_tick:
                self._next_tick = now + TICK_S
                self._tick(now)

    # -- connecting ---------------------------------------------------------------------------------

    def _new_client(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        proto = mqtt.MQTTv5 if self._version.use_v5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {}
        if not self._version.use_v5:
            kwargs["clean_session"] = True
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id, protocol=proto, **kwargs
        )
        # Our own bound is the real one; paho must never queue behind it (0 would mean unlimited).
        client.max_inflight_messages_set(self.cfg.max_inflight + 8)
        client.max_queued_messages_set(0)
        client.will_set(
            self.state_topic, encode_state(Presence.OFFLINE, self.boot, _wall_ms()), qos=1, retain=True
        )
        if self.cfg.username is not None:
            client.username_pw_set(self.cfg.username, self._password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_publish = self._cb_publish
        client.on_message = self._cb_message
        return client

    def _connect(self) -> None:
        self._client = self._new_client()
        self.counters.protocol = "5" if self._version.use_v5 else "3.1.1"
        self._got_connack = False
        try:
            if self._version.use_v5:
                self._client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=True)
            else:
                self._client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as e:
            self._version.unreachable()
            self._failed(f"cannot connect to {self.cfg.host}:{self.cfg.port}: {e}")
            return
        self.state = State.CONNECTING
        self._connecting_since = self._clock()

    def _failed(self, why: str) -> None:
        self.counters.connect_failures += 1
        self._drop_client()
        delay = backoff_delay(self._attempt, self.cfg.backoff_min_s, self.cfg.backoff_max_s, self._rng)
        self._attempt += 1
        self._next_attempt = self._clock() + delay
        if why not in self._warned:
            self._warned.add(why)
            log.warning("mqtt: %s; retrying in %.1f s (repeats are not logged)", why, delay)
        else:
            log.debug("mqtt: %s; retrying in %.1f s", why, delay)

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(Exception):
                sock = client.socket()
                if sock is not None:
                    sock.close()
        self.state = State.DISCONNECTED
        self.connected_event.clear()
        self._inflight.clear()
        self._state_mids.clear()
        self._resend_from = self._resend_upto = None

    def _lost(self, why: str, cause: Cause = Cause.CLOSED) -> None:
        """The connection (or the attempt at one) ended; ``cause`` says how, when no CONNACK came."""
        was_connected = self.state is State.CONNECTED
        if not self._got_connack and self._version.no_connack(cause):
            # A 3.1.1-only broker may close the socket on, or never answer, an MQTT 5 CONNECT.
            self._fallback(f"no CONNACK to MQTT 5: {cause.value}")
            return
        if was_connected:
            self._version.disconnected()
            self.counters.disconnects += 1
            log.warning("mqtt: connection lost (%s)", why)
            self._attempt = 0
        self._failed(why)

    def _fallback(self, why: str) -> None:
        log.info("mqtt: %s; trying MQTT 3.1.1", why)
        self.counters.protocol_fallbacks = self._version.fallbacks
        self._drop_client()
        self._next_attempt = self._clock()

    # -- callbacks: record only ----------------------------------------------------------------------

    # Callbacks of a client we already dropped (paho calls on_disconnect from disconnect()) must not
    # leak into the next connection's events: each callback checks that its client is the current one.
    def _cb_connect(self, c: Any, _u: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        if c is self._client:
            self._events.connack = reason_code

    def _cb_disconnect(self, c: Any, _u: Any, _flags: Any, _reason: Any, _props: Any) -> None:
        if c is self._client:
            self._events.disconnected = True

    def _cb_publish(self, c: Any, _u: Any, mid: int, reason_code: Any, _props: Any) -> None:
        if c is self._client:
            self._events.pubacks.append((mid, int(getattr(reason_code, "value", 0))))

    def _cb_message(self, c: Any, _u: Any, msg: Any) -> None:
        if c is self._client:
            self._events.messages.append((str(msg.topic), bytes(msg.payload)))

    # -- handling what callbacks recorded -------------------------------------------------------------

    def _handle_events(self) -> None:
        ev, self._events = self._events, _Events()
        if ev.connack is not None:
            self._on_connack(ev.connack)
        for mid, reason in ev.pubacks:
            self._on_puback(mid, reason)
        for topic, payload in ev.messages:
            if topic == self.ack_topic:
                self._on_ack(payload)
            elif topic == self.cmd_topic:
                self.counters.commands += 1
                self._on_command(payload)
        if ev.disconnected and self._client is not None and self.state is not State.DISCONNECTED:
            self._lost("broker closed the connection")

    def _on_connack(self, reason_code: Any) -> None:
        self._got_connack = True
        value = int(getattr(reason_code, "value", reason_code))
        failed = bool(getattr(reason_code, "is_failure", value != 0))
        if failed and value in UNSUPPORTED_PROTOCOL_VERSION and self._version.refused():
            self._fallback(f"broker refused MQTT 5 (CONNACK {reason_code})")
            return
        self._version.answered()
        if failed:
            self._failed(f"broker refused the connection: {reason_code}")
            return
        self.state = State.CONNECTED
        self.counters.connects += 1
        self._attempt = 0
        log.info("mqtt: connected to %s:%d (MQTT %s)", self.cfg.host, self.cfg.port, self.counters.protocol)
        self._client.subscribe([(self.cmd_topic, 1), (self.ack_topic, 1)])
        info = self._client.publish(
            self.state_topic, encode_state(Presence.ONLINE, self.boot, _wall_ms()), 1, True
        )
        self._state_mids.add(info.mid)
        # docs/protocol.md §5: every stored entry is sent again on every reconnect, in chain order.
        self._fresh.clear()
        self._sent_high = (-1, -1)
        self._marks.clear()
        self._start_resend(None)
        self.connected_event.set()

    def _on_puback(self, mid: int, reason: int) -> None:
        if mid in self._state_mids:
            self._state_mids.discard(mid)
            return
        key = self._inflight.pop(mid, None)
        if key is None:
            return
        self.counters.pubacks += 1
        if reason >= 0x80:
            self.counters.publish_refused += 1
            if "refused" not in self._warned:
                self._warned.add("refused")
                log.warning("mqtt: broker refused a publish (reason %d); check the ACL", reason)
            return
        if self.delivery is Delivery.BROKER_ACK:
            self.counters.deleted += self.outbox.ack_one(*key)
            self._on_delivered(key[0], key[1])

    def _on_ack(self, payload: bytes) -> None:
        try:
            opened = open_envelope(payload, self.fleet, self._ring)
        except EnvelopeError as e:
            self.counters.bad_acks += 1
            log.debug("mqtt: ack rejected: %s", e)
            return
        if opened.kind is not Kind.ACK or opened.dev != self.dev or opened.boot is None or opened.seq is None:
            self.counters.bad_acks += 1
            return
        self.counters.acks += 1
        self.counters.deleted += self.outbox.ack_upto(opened.boot, opened.seq)
        self._on_delivered(opened.boot, opened.seq)

    # -- sending ------------------------------------------------------------------------------------

    def _start_resend(self, upto: tuple[int, int] | None) -> None:
        self.counters.resends += 1
        self._resend_from = (-1, -1)
        self._resend_upto = upto

    def _publish(self, entry: Entry) -> bool:
        info = self._client.publish(entry.topic, entry.cose, qos=1, retain=entry.retain)
        if info.rc != 0:
            return False
        self._inflight[info.mid] = entry.key
        self.counters.published += 1
        return True

    def _pump(self) -> None:
        """Publish resend pages, then fresh entries, while the in-flight bound allows."""
        limit = self.cfg.max_inflight
        while self._resend_from is not None and len(self._inflight) < limit:
            page = self.outbox.pending(self._resend_from, min(RESEND_PAGE, limit - len(self._inflight)))
            if self._resend_upto is not None:
                page = [e for e in page if e.key <= self._resend_upto]
            if not page:
                self._resend_from = self._resend_upto = None
                break
            for entry in page:
                if not self._publish(entry):
                    return
                self._resend_from = entry.key
                self._sent_high = max(self._sent_high, entry.key)
        while self._resend_from is None and self._fresh and len(self._inflight) < limit:
            entry = self._fresh[0]
            if entry.key <= self._sent_high or entry.key <= self.outbox.drop_floor:
                self._fresh.popleft()  # already sent by a resend pass, or dropped for room
                continue
            if not self._publish(entry):
                return
            self._fresh.popleft()
            self._sent_high = entry.key

    def _tick(self, now: float) -> None:
        """Once a second: remember how far sending got; resend what stayed unacked too long."""
        if not self._marks or self._marks[-1][1] != self._sent_high:
            self._marks.append((now, self._sent_high))
        horizon = now - self.cfg.resend_after_s
        upto: tuple[int, int] | None = None
        while self._marks and self._marks[0][0] <= horizon:
            upto = self._marks.popleft()[1]
        if upto is None or self._resend_from is not None:
            if upto is not None:
                self._marks.appendleft((horizon, upto))
            return
        oldest = self.outbox.pending(None, 1)
        if oldest and oldest[0].key <= upto:
            log.info("mqtt: entries unacked for %.0f s; sending them again", self.cfg.resend_after_s)
            self._start_resend(upto)
            self._marks.appendleft((now, upto))
        # else: everything sent before the horizon is acked; the mark is spent

    def _goodbye(self) -> None:
        """Clean stop: the offline state (a clean DISCONNECT does not fire the Will), then DISCONNECT."""
        client = self._client
        if client is None or self.state is not State.CONNECTED:
            self._drop_client()
            return
        info = client.publish(
            self.state_topic, encode_state(Presence.OFFLINE, self.boot, _wall_ms()), 1, True
        )
        deadline = self._clock() + 1.0
        while self._clock() < deadline and not info.is_published() and client.socket() is not None:
            readable, writable = self._wait(0.05, client.socket())
            if readable:
                client.loop_read()
            if writable or client.want_write():
                client.loop_write()
        self._handle_events_quietly()
        self._drop_client()

    def _handle_events_quietly(self) -> None:
        ev, self._events = self._events, _Events()
        for mid, reason in ev.pubacks:
            self._on_puback(mid, reason)
        for topic, payload in ev.messages:
            if topic == self.ack_topic:
                self._on_ack(payload)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000
