"""The embedded amqtt broker used by ``fleet demo`` when Mosquitto is absent: real MQTT 3.1.1 traffic."""

from __future__ import annotations

import asyncio
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from fleet_cli.demo.embedded_broker import EmbeddedBroker, _SnapshotDict, amqtt_config, install_snapshot_table

pytestmark = pytest.mark.integration


def test_publish_subscribe_qos1_round_trip() -> None:
    n = 200
    with EmbeddedBroker() as broker:
        got: list[bytes] = []
        done = threading.Event()
        subscribed = threading.Event()

        def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            got.append(msg.payload)
            if len(got) == n:
                done.set()

        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sub", protocol=mqtt.MQTTv311)
        sub.on_message = on_message
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.connect(broker.host, broker.port)
        sub.subscribe("edgeseal/v1/demo/+/res/#", qos=1)
        sub.loop_start()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv311)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        try:
            assert subscribed.wait(10)
            for i in range(n):
                pub.publish("edgeseal/v1/demo/dev-01/res/vib", i.to_bytes(4, "big"), qos=1)
            assert done.wait(30), f"received {len(got)} of {n}"
            assert sorted(int.from_bytes(p, "big") for p in got) == list(range(n))
        finally:
            pub.loop_stop()
            sub.loop_stop()
            pub.disconnect()
            sub.disconnect()


def test_amqtt_still_has_the_subscription_table_the_patch_replaces() -> None:
    """The patch writes amqtt's private ``Broker._subscriptions`` (pyproject.toml bounds amqtt for it).
    This fails the day amqtt renames it, makes it something other than a plain dict, or stops serving
    its public ``subscriptions`` from it; test_clients_connecting_while_others_subscribe shows the patch
    still prevents the race."""
    from amqtt.broker import Broker

    loop = asyncio.new_event_loop()
    try:
        broker = Broker(amqtt_config("127.0.0.1", 0), loop=loop)
        table = broker._subscriptions
        assert type(table) is dict
        assert table == {}
        assert broker.subscriptions is table
        assert install_snapshot_table(broker)
        assert type(broker._subscriptions) is _SnapshotDict
        assert broker.subscriptions is broker._subscriptions
    finally:
        loop.close()


def test_amqtt_files_subscriptions_in_the_patched_table() -> None:
    """amqtt adds a subscription to the table the patch installed (it neither rebinds the attribute nor
    keeps another one), as ``{filter: [(session, qos), ...]}``, the shape its own loops iterate."""
    with EmbeddedBroker() as broker:
        subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe", protocol=mqtt.MQTTv311)
        client.on_subscribe = lambda *a: subscribed.set()
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            client.subscribe("probe/#", qos=1)
            assert subscribed.wait(10)
            table = broker._broker.subscriptions
            assert type(table) is _SnapshotDict
            deadline = time.monotonic() + 5
            while "probe/#" not in table and time.monotonic() < deadline:
                time.sleep(0.02)
            [(session, qos)] = table["probe/#"]
            assert session.client_id == "probe"
            assert qos == 1
        finally:
            client.disconnect()
            client.loop_stop()


def test_stop_is_idempotent_and_frees_the_port() -> None:
    broker = EmbeddedBroker().start()
    port = broker.port
    broker.stop()
    broker.stop()
    with EmbeddedBroker(port=port):
        pass


def test_clients_connecting_while_others_subscribe() -> None:
    """amqtt iterates its subscription table across awaits (retained messages for a new session); clients
    subscribing meanwhile used to kill the connecting session with "dictionary changed size during
    iteration" (seen in CI with ``fleet demo --broker embedded``). Every client here must get its own
    message back, and no exception may escape amqtt."""
    n = 40
    with EmbeddedBroker() as broker:
        # A retained message and a subscription matching it make every new session's retained-message
        # loop yield, which is the window the race needs.
        keeper = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="keeper", protocol=mqtt.MQTTv311)
        keeper.connect(broker.host, broker.port)
        keeper.loop_start()
        keeper.subscribe("retained/#", qos=1)
        for i in range(20):
            keeper.publish(f"retained/{i}", b"r" * 64, qos=1, retain=True).wait_for_publish(10)
        received: dict[str, threading.Event] = {f"c{i}": threading.Event() for i in range(n)}
        clients: list[mqtt.Client] = []

        def on_connect(client: mqtt.Client, userdata: str, *rest: object) -> None:
            client.subscribe(f"own/{userdata}", qos=1)

        def on_subscribe(client: mqtt.Client, userdata: str, *rest: object) -> None:
            client.publish(f"own/{userdata}", userdata.encode(), qos=1)

        def on_message(client: mqtt.Client, userdata: str, msg: mqtt.MQTTMessage) -> None:
            if msg.topic == f"own/{userdata}":
                received[userdata].set()

        try:
            for name in received:
                c = mqtt.Client(
                    mqtt.CallbackAPIVersion.VERSION2, client_id=name, userdata=name, protocol=mqtt.MQTTv311
                )
                c.on_connect = on_connect
                c.on_subscribe = on_subscribe
                c.on_message = on_message
                c.connect_async(broker.host, broker.port)
                c.loop_start()
                clients.append(c)
            missing = [name for name, ev in received.items() if not ev.wait(20)]
            assert missing == [], f"{len(missing)} of {n} clients never got their message back"
            assert broker.internal_errors == 0
        finally:
            for c in [*clients, keeper]:
                c.disconnect()
                c.loop_stop()
