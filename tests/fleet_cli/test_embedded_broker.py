"""The embedded amqtt broker used by ``fleet demo`` when Mosquitto is absent: real MQTT 3.1.1 traffic."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest

from fleet_cli.embedded_broker import EmbeddedBroker

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


def test_stop_is_idempotent_and_frees_the_port() -> None:
    broker = EmbeddedBroker().start()
    port = broker.port
    broker.stop()
    broker.stop()
    with EmbeddedBroker(port=port):
        pass
