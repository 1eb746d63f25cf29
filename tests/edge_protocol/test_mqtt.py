"""edge_protocol.mqtt: the CONNACK codes meaning "wrong protocol version", named as paho names them."""

from __future__ import annotations

import pytest

from edge_protocol.mqtt import UNSUPPORTED_PROTOCOL_VERSION

paho_client = pytest.importorskip("paho.mqtt.client")


def test_unsupported_protocol_version_codes() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    names = {
        ReasonCode(PacketTypes.CONNACK, identifier=c).getName() for c in UNSUPPORTED_PROTOCOL_VERSION - {1}
    }
    assert names == {"Unsupported protocol version"}  # MQTT 5 §3.2.2.2
    assert "unacceptable protocol version" in paho_client.connack_string(1)  # MQTT 3.1.1 §3.2.2.3
    assert {0x01, 0x84} == UNSUPPORTED_PROTOCOL_VERSION
