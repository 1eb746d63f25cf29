"""fleet_cli.mqtt.connection.Connection without a fleet: the connect paths (a 3.1.1-only broker, a
broker that never answers, nothing listening), each ending in a connection or one MqttError and leaving
no paho thread; and manual acknowledgement against a real Mosquitto (PUBACKs release the broker's
in-flight window and settle the persistent session)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from broker_config.runner import free_port
from fleet_cli.demo.embedded_broker import EmbeddedBroker
from fleet_cli.mqtt.connection import Connection
from fleet_cli.mqtt.settings import MqttError, MqttSettings, MqttVersion, Received
from tests._mosquitto import Broker

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
        link = Connection(settings, subscriptions=["t/#"], on_message=lambda m: got.append(m.payload))
        link.connect(timeout_s=3)
        try:
            assert link.protocol is MqttVersion.V311
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
        settings = MqttSettings(host="127.0.0.1", port=port, protocol=MqttVersion.V5, client_id="link-silent")
        with pytest.raises(MqttError, match="no CONNACK"):
            Connection(settings).connect(timeout_s=1)


def test_nothing_listening_is_one_error(no_thread_left: None) -> None:
    settings = MqttSettings(host="127.0.0.1", port=free_port(), client_id="link-closed")
    with pytest.raises(MqttError, match="cannot reach the broker"):
        Connection(settings).connect(timeout_s=1)


# -- manual acknowledgement ----------------------------------------------------------------------------

# The in-flight window the acking client asks for (MQTT 5 Receive Maximum); 3.1.1 clients get
# Mosquitto's max_inflight_messages (20 by default), so those tests measure the window instead.
WINDOW = 8
# A delivery the broker would still send arrives well within this on loopback.
QUIET_S = 0.4


def _settle(got: list[Received], timeout_s: float = 10.0) -> int:
    """Wait until no delivery has arrived for QUIET_S; the number received."""
    deadline = time.monotonic() + timeout_s
    seen = -1
    while len(got) != seen and time.monotonic() < deadline:
        seen = len(got)
        time.sleep(QUIET_S)
    return len(got)


def _acker(
    broker: Broker, protocol: MqttVersion, client_id: str, topic: str, got: list[Received]
) -> Connection:
    settings = MqttSettings(
        host=broker.host, port=broker.port, protocol=protocol, client_id=client_id, persistent=True
    )
    link = Connection(
        settings, subscriptions=[topic], on_message=got.append, manual_ack=True, receive_maximum=WINDOW
    )
    return link.connect(timeout_s=5)


def _publish(broker: Broker, topic: str, n: int) -> None:
    settings = MqttSettings(host=broker.host, port=broker.port, client_id=f"pub-{uuid.uuid4().hex}")
    pub = Connection(settings).connect(timeout_s=5)
    try:
        for i in range(n):
            pub.publish_wait(topic, i.to_bytes(2, "big"))
    finally:
        pub.close()


@pytest.mark.parametrize("protocol", [MqttVersion.V5, MqttVersion.V311])
def test_ack_many_releases_the_brokers_in_flight_window(
    mosquitto: Broker, protocol: MqttVersion, no_thread_left: None
) -> None:
    """Unacknowledged QoS 1 deliveries stop at the window, and only ack_many's PUBACKs let the rest come.

    Which slot each PUBACK frees is not counted here: Mosquitto 2.0.11 may send more than one queued
    message per PUBACK. The persistent-session test below shows that exactly the ids given were acked.
    """
    topic = f"test/ack-window/{uuid.uuid4().hex}"
    total = 50
    got: list[Received] = []
    link = _acker(mosquitto, protocol, f"acker-{uuid.uuid4().hex}", topic, got)
    try:
        _publish(mosquitto, topic, total)
        window = _settle(got)
        assert 0 < window < total
        if protocol is MqttVersion.V5:
            assert window == WINDOW
        acked = 0
        while len(got) < total:
            received = len(got)
            link.ack_many([m.mid for m in got[acked:received]])
            acked = received
            assert _settle(got) > received, "the PUBACKs released nothing"
        assert [int.from_bytes(m.payload, "big") for m in got] == list(range(total))
        link.ack_many([m.mid for m in got[acked:]])
    finally:
        link.close()


@pytest.mark.parametrize("protocol", [MqttVersion.V5, MqttVersion.V311])
def test_acked_deliveries_leave_the_persistent_session(
    mosquitto: Broker, protocol: MqttVersion, no_thread_left: None
) -> None:
    """After a reconnect the broker sends again exactly what was not acknowledged (the collector's
    promise: a message whose commit did not happen is delivered again)."""
    topic = f"test/ack-session/{uuid.uuid4().hex}"
    client_id = f"acker-{uuid.uuid4().hex}"
    got: list[Received] = []
    link = _acker(mosquitto, protocol, client_id, topic, got)
    try:
        _publish(mosquitto, topic, 6)
        assert _settle(got) == 6
        link.ack_many([m.mid for m in got[:4]])
        # The broker reads one connection in order: once it has acknowledged this publish it has
        # handled the PUBACKs before it. (Without that, the reconnect below may take the session over
        # while they still sit unread in the old socket; MQTT never confirms a PUBACK.)
        link.publish_wait(f"{topic}/barrier", b"")
    finally:
        link.close()
    again: list[Received] = []
    link = _acker(mosquitto, protocol, client_id, topic, again)
    try:
        _settle(again)
        assert [int.from_bytes(m.payload, "big") for m in again] == [4, 5]
        link.ack_many([m.mid for m in again])
    finally:
        link.close()


@pytest.mark.parametrize("port", [0, -1, 65_536, 99_999_999_999_999_999_999])
def test_a_port_out_of_range_is_one_error(port: int) -> None:
    """--port 99999999999999999999 on fleet watch/collect/cmd was an OverflowError in the socket layer."""
    with pytest.raises(MqttError, match=r"not in 1\.\.65535"):
        MqttSettings(port=port)
