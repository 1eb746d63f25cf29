"""What a fleet-side MQTT connection needs to know, without paho: :class:`MqttSettings` and the
protocol choice (:class:`MqttVersion`). :mod:`fleet_cli.home` builds them for a home's user without
loading the transport; :mod:`fleet_cli.mqtt.connection` connects with them."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet_cli.errors import FleetError

MAX_PORT = 65_535  # TCP port numbers are 16 bits (RFC 793)

# Keepalive for fleet-side clients; Mosquitto caps it at its max_keepalive (300 s).
KEEPALIVE_S = 30


class MqttError(FleetError):
    """The broker could not be reached, refused us, or the connection broke."""


class MqttVersion(str, enum.Enum):
    AUTO = "auto"
    V5 = "5"
    V311 = "3.1.1"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None  # secret: never logged
    tls_ca: Path | None = None  # CA certificate file: TLS with hostname checking when set
    protocol: MqttVersion = MqttVersion.AUTO
    client_id: str = ""
    persistent: bool = False  # clean_start / clean_session False, session expiry set
    keepalive_s: int = KEEPALIVE_S

    def __post_init__(self) -> None:
        # Every fleet-side connection is made from these settings: a port from a CLI option or
        # fleet.toml is checked here once, not as an OverflowError deep in the socket layer.
        if type(self.port) is not int or not 1 <= self.port <= MAX_PORT:
            raise MqttError(f"broker port {str(self.port)[:24]} is not in 1..{MAX_PORT}", hint="check --port")

    def __repr__(self) -> str:  # no password in logs or tracebacks
        return (
            f"MqttSettings(host={self.host!r}, port={self.port}, username={self.username!r},"
            f" tls={'yes' if self.tls_ca else 'no'}, protocol={self.protocol.value})"
        )


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool


OnMessage = Callable[[Received], None]
OnRaw = Callable[[str, bytes, int, int], None]
"""``on_raw(topic, payload, mid, qos)``: :data:`OnMessage` without building a :class:`Received`."""
