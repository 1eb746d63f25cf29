"""Shared helpers for the broker and fleet CLI tests: reachable temp dirs, fleets, a small MQTT peer."""

from __future__ import annotations

import os
import queue
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from broker_config.runner import free_port
from fleet_cli.home import FleetHome, init_fleet

TIMEOUT_S = 5.0


def reachable(path: Path) -> Path:
    """Let the broker's user (when we are root) pass through ``path`` and its parents, as the
    session fixture in tests/conftest.py does: Mosquitto drops to 'mosquitto' before reading files."""
    if os.geteuid() == 0:
        for p in (path, *path.parents):
            if p == Path("/"):
                break
            p.chmod(p.stat().st_mode | 0o011)
    return path


def make_fleet(tmp: Path, fleet: str = "acl", *, plain: bool = True) -> FleetHome:
    """A fresh fleet in ``tmp/home`` on free ports, the TLS listener bound to loopback."""
    reachable(tmp)
    home = init_fleet(tmp / "home", fleet, tls_port=free_port(), plain_port=free_port() if plain else 0)
    # Tests never listen beyond loopback.
    text = home.config_path.read_text().replace('tls_bind = ""', 'tls_bind = "127.0.0.1"')
    home.config_path.write_text(text)
    return FleetHome.load(home.root)


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    retain: bool


class Refused(Exception):
    def __init__(self, reason: object) -> None:
        super().__init__(f"connection refused: {reason}")
        self.reason = reason


class Peer:
    """A paho-mqtt 2.x client run synchronously: connect, subscribe, publish, wait for messages."""

    def __init__(
        self,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        ca: Path | None = None,
        client_id: str = "",
        v5: bool = True,
    ) -> None:
        self.protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=self.protocol)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.port = port
        self.messages: queue.Queue[Msg] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack: ReasonCode | None = None
        self._suback: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, c: object, u: object, flags: object, rc: ReasonCode, props: object) -> None:
        self.connack = rc
        if rc.is_failure:
            self.disconnected.set()
        else:
            self.connected.set()

    def _on_disconnect(self, c: object, u: object, flags: object, rc: ReasonCode, props: object) -> None:
        self.disconnected.set()

    def _on_message(self, c: object, u: object, m: mqtt.MQTTMessage) -> None:
        self.messages.put(Msg(m.topic, bytes(m.payload), bool(m.retain)))

    def _on_subscribe(self, c: object, u: object, mid: int, rcs: list[ReasonCode], props: object) -> None:
        self._suback.put(rcs)

    def connect(self) -> Peer:
        """Connect or raise :class:`Refused` (bad CONNACK, dropped connection) / ssl errors."""
        # 127.0.0.1 is one of the server certificate's SANs, so hostname checking stays on.
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        # Run the network loop here until CONNACK (or the connection drops): a refused client then
        # never enters paho's reconnect loop. Only a connected client gets the background thread.
        deadline = time.monotonic() + TIMEOUT_S
        while not (self.connected.is_set() or self.disconnected.is_set()) and time.monotonic() < deadline:
            if self.client.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
        if not self.connected.is_set():
            self.client.disconnect()
            self.client._reset_sockets()
            raise Refused(self.connack)
        # paho 2.2's loop_start() replaces the socket pair loop() made without closing it.
        self.client._reset_sockets(sockpair_only=True)
        self.client.loop_start()
        return self

    def subscribe(self, topic: str, qos: int = 1) -> list[ReasonCode]:
        self.client.subscribe(topic, qos)
        return self._suback.get(timeout=TIMEOUT_S)

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(TIMEOUT_S)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK for {topic}")

    def collect_until(self, marker: bytes) -> list[Msg]:
        """Every message before ``marker`` (which must arrive within the timeout)."""
        got: list[Msg] = []
        while True:
            m = self.messages.get(timeout=TIMEOUT_S)
            if m.payload == marker:
                return got
            got.append(m)

    def saw(self, payload: bytes) -> bool:
        """Did ``payload`` arrive (now or within the timeout)? Consumes messages up to it."""
        try:
            self.collect_until(payload)
        except queue.Empty:
            return False
        return True

    def drain(self) -> list[Msg]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
