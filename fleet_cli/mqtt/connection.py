"""A small paho-mqtt 2.x client for the fleet side: connect (MQTT 5, falling back to 3.1.1), subscribe,
publish, acknowledge.

Rules from docs/field-notes.md this module keeps:

* one network thread (paho's ``loop_start``); callbacks never block: ``on_message`` hands the message
  to the caller's function, which must only enqueue it;
* with ``manual_ack`` the PUBACK of a QoS 1 delivery is sent only when the caller says so
  (:meth:`Connection.ack`): the collector acknowledges after the message is committed to its store, so the
  broker keeps the message in the persistent session until then, and its in-flight window (MQTT 5
  Receive Maximum / Mosquitto ``max_inflight_messages``) is the back-pressure on a slow collector;
* with ``use_username_as_clientid`` every connection needs a user of its own (a second login with the
  same name takes the first one over).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_protocol.mqtt import UNSUPPORTED_PROTOCOL_VERSION
from fleet_cli.mqtt.settings import (
    MqttError,
    MqttSettings,
    MqttVersion,
    OnMessage,
    OnRaw,
    Received,
)

log = logging.getLogger(__name__)

# How long connect() waits for a CONNACK before it calls the broker unreachable.
CONNECT_TIMEOUT_S = 10.0
# A persistent collector session outlives a restart or an upgrade; Mosquitto also drops sessions
# nobody resumes after persistent_client_expiration (14 days in the rendered config).
SESSION_EXPIRY_S = 7 * 24 * 3600
# MQTT 5 Receive Maximum (§3.1.2.11.3): QoS 1 deliveries the broker may have unacknowledged towards
# us. The collector PUBACKs after its batch commits; 1000 covers one 500-message batch being written
# while the next one arrives. 3.1.1 brokers use their own max_inflight_messages instead.
RECEIVE_MAXIMUM = 1000
# Reconnect back-off (paho): from 1 s up to 30 s.
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30


class Connection:
    """One connection. ``on_message`` runs on paho's network thread and must not block."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        subscriptions: Sequence[str] = (),
        qos: int = 1,
        on_message: OnMessage | None = None,
        manual_ack: bool = False,
        receive_maximum: int = RECEIVE_MAXIMUM,
        on_raw: OnRaw | None = None,
    ) -> None:
        self.settings = settings
        self.subscriptions = tuple(subscriptions)
        self.qos = qos
        self._on_message_cb = on_message
        self._on_raw_cb = on_raw
        self._manual_ack = manual_ack
        self._receive_maximum = receive_maximum
        self.protocol: MqttVersion | None = None
        self.connected = threading.Event()
        self._client: mqtt.Client | None = None
        self._connack: ReasonCode | None = None
        self._answered = threading.Event()  # the connect attempt ended: a CONNACK or a disconnect
        self._closed = threading.Event()
        self._sub_acked = threading.Event()
        self._pending_subs = 0
        self._lock = threading.Lock()
        self.reconnects = 0

    # -- connecting ---------------------------------------------------------------------------

    def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> Connection:
        """Connect and subscribe; try MQTT 5 then 3.1.1 when the protocol is ``auto``."""
        order = {
            MqttVersion.AUTO: (MqttVersion.V5, MqttVersion.V311),
            MqttVersion.V5: (MqttVersion.V5,),
            MqttVersion.V311: (MqttVersion.V311,),
        }[self.settings.protocol]
        first_error: MqttError | None = None
        for proto in order:
            try:
                self._connect_once(proto, timeout_s)
            except MqttError as e:
                first_error = first_error or e
                code = self._connack.value if self._connack is not None else None
                if code is not None and code not in UNSUPPORTED_PROTOCOL_VERSION:
                    raise  # a real refusal (credentials, ACL): 3.1.1 would not help
                log.info("MQTT %s failed (%s); trying the next protocol version", proto.value, e)
                continue
            self.protocol = proto
            return self
        assert first_error is not None
        raise first_error

    def _make_client(self, proto: MqttVersion) -> mqtt.Client:
        s = self.settings
        kwargs: dict[str, Any] = {"client_id": s.client_id, "manual_ack": self._manual_ack}
        if proto is MqttVersion.V5:
            kwargs["protocol"] = mqtt.MQTTv5
        else:
            kwargs["protocol"] = mqtt.MQTTv311
            kwargs["clean_session"] = not s.persistent
        client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls_ca is not None:
            try:
                client.tls_set(ca_certs=str(s.tls_ca), cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError) as e:
                raise MqttError(f"cannot use the CA certificate {s.tls_ca}: {e}") from e
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _connect_once(self, proto: MqttVersion, timeout_s: float) -> None:
        s = self.settings
        self._connack = None
        self._answered.clear()
        self.connected.clear()
        client = self._make_client(proto)
        self._client = client
        props: Properties | None = None
        clean_start: Any = mqtt.MQTT_CLEAN_START_FIRST_ONLY
        if proto is MqttVersion.V5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.ReceiveMaximum = self._receive_maximum
            if s.persistent:
                props.SessionExpiryInterval = SESSION_EXPIRY_S
                clean_start = False
            else:
                clean_start = True
        try:
            client.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=clean_start, properties=props)
        except (OSError, ssl.SSLError) as e:
            raise MqttError(
                f"cannot reach the broker at {s.host}:{s.port}: {e}",
                hint="is it running? (`fleet broker start`); check --host/--port",
            ) from e
        client.loop_start()  # the network thread from here on; it reconnects by itself after a drop
        self._answered.wait(timeout_s)
        if not self.connected.is_set():
            self._client = None  # its late callbacks are ignored from now on
            client.disconnect()  # stops the network thread's own reconnect attempts
            client.loop_stop()
            reason = (
                self._connack if self._connack is not None else "no CONNACK (connection closed or timed out)"
            )
            raise MqttError(
                f"the broker at {s.host}:{s.port} refused MQTT {proto.value}: {reason}",
                hint="check the user name and password (`fleet user credentials NAME`) and the broker's ACL",
            )
        if self.subscriptions and not self._sub_acked.wait(timeout_s):
            self.close()
            raise MqttError(f"no SUBACK from {s.host}:{s.port}")

    # -- paho callbacks (network thread: never block) -------------------------------------------

    def _on_connect(self, client: mqtt.Client, u: object, flags: Any, rc: ReasonCode, props: object) -> None:
        if client is not self._client:
            return  # a client given up on (a timed-out attempt, the other protocol version)
        self._connack = rc
        if rc.is_failure:
            self._answered.set()
            return
        if self.connected.is_set() or self.reconnects:
            log.info("reconnected to %s:%d", self.settings.host, self.settings.port)
        session_present = bool(getattr(flags, "session_present", False))
        if self.subscriptions and not session_present:
            with self._lock:
                self._pending_subs = len(self.subscriptions)
            for f in self.subscriptions:
                client.subscribe(f, self.qos)
        else:
            self._sub_acked.set()
        self.connected.set()
        self._answered.set()

    def _on_subscribe(self, c: object, u: object, mid: int, rcs: list[ReasonCode], props: object) -> None:
        for rc in rcs:
            if rc.is_failure:
                log.warning("subscription refused: %s", rc)
        with self._lock:
            self._pending_subs -= 1
            if self._pending_subs <= 0:
                self._sub_acked.set()

    def _on_disconnect(self, c: object, u: object, flags: object, rc: ReasonCode, props: object) -> None:
        if c is not self._client:
            return
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._answered.set()
        if was_connected and not self._closed.is_set():
            self.reconnects += 1
            log.warning("disconnected from the broker (%s); paho reconnects", rc)

    def _on_message(self, c: object, u: object, m: mqtt.MQTTMessage) -> None:
        raw = self._on_raw_cb
        if raw is None and self._on_message_cb is None:
            return
        try:
            topic = m.topic
        except UnicodeDecodeError:
            topic = "<topic is not UTF-8>"
        if raw is not None:
            raw(topic, bytes(m.payload), m.mid, m.qos)
        else:
            assert self._on_message_cb is not None
            self._on_message_cb(Received(topic, bytes(m.payload), m.mid, m.qos, bool(m.retain)))

    # -- use ----------------------------------------------------------------------------------

    @property
    def client(self) -> mqtt.Client:
        if self._client is None:
            raise MqttError("not connected")
        return self._client

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a publish on the network thread; never waits."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_QUEUE_SIZE):
            log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))

    def publish_wait(self, topic: str, payload: bytes | str, *, qos: int = 1, timeout_s: float = 5.0) -> None:
        """Publish and wait for the PUBACK (for one-shot commands, never from a callback)."""
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise MqttError(f"the broker did not acknowledge the publish to {topic}")

    def ack(self, mid: int, qos: int = 1) -> None:
        if self._manual_ack and qos > 0 and self._client is not None:
            self._client.ack(mid, qos)

    def ack_many(self, mids: Sequence[int]) -> None:
        """PUBACK several QoS 1 deliveries, in this order, through paho's public :meth:`Client.ack`.

        paho has no public call that queues several: each id is one 4-byte packet and one wake-up of the
        network thread, about 6 µs of this thread's CPU per id (one hand-built write to paho's private
        packet queue took under 1 µs). That is a small share of a stored message's cost, and a paho
        upgrade cannot silently break it.
        """
        client = self._client
        if not self._manual_ack or client is None:
            return
        for mid in mids:
            client.ack(mid, 1)

    def close(self) -> None:
        self._closed.set()
        client = self._client
        if client is None:
            return
        client.disconnect()
        client.loop_stop()
        self.connected.clear()
