"""fleet_cli.mqtt.Link's connect paths that need no fleet: a 3.1.1-only broker, a broker that never
answers, nothing listening. Each ends in a connection or one MqttError, and leaves no paho thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from broker_config.runner import free_port
from fleet_cli.embedded_broker import EmbeddedBroker
from fleet_cli.mqtt import Link, MqttError, MqttSettings, Protocol

pytestmark = pytest.mark.integration


@pytest.fixture
def no_thread_left() -> Iterator[None]:
    before = threading.active_count()
    yield
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


def test_auto_falls_back_to_311_on_a_broker_without_mqtt5(no_thread_left: None) -> None:
    with EmbeddedBroker() as broker:
        got: list[bytes] = []
        settings = MqttSettings(host=broker.host, port=broker.port, client_id="link-auto")
        link = Link(settings, subscriptions=["t/#"], on_message=lambda m: got.append(m.payload))
        link.connect(timeout_s=3)
        try:
            assert link.protocol is Protocol.V311
            link.publish_wait("t/x", b"hello")
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                time.sleep(0.02)
            assert got == [b"hello"]
        finally:
            link.close()


def test_a_broker_that_never_answers_is_one_error(no_thread_left: None) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never speaks MQTT
        port = silent.getsockname()[1]
        settings = MqttSettings(host="127.0.0.1", port=port, protocol=Protocol.V5, client_id="link-silent")
        with pytest.raises(MqttError, match="no CONNACK"):
            Link(settings).connect(timeout_s=1)


def test_nothing_listening_is_one_error(no_thread_left: None) -> None:
    settings = MqttSettings(host="127.0.0.1", port=free_port(), client_id="link-closed")
    with pytest.raises(MqttError, match="cannot reach the broker"):
        Link(settings).connect(timeout_s=1)
