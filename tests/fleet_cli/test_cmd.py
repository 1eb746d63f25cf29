"""``fleet cmd`` against a test device that checks the operator's signature and answers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from edge_protocol.envelope import EnvelopeError, open_envelope
from edge_protocol.keys import read_private_key
from edge_protocol.payload import Key, Kind
from edge_protocol.topics import Channel, device_topic
from fleet_cli.app import main
from fleet_cli.cmd_cmd import parse_args
from fleet_cli.errors import UsageError
from fleet_cli.home import init_fleet
from fleet_cli.mqtt import Link, MqttSettings, Received
from fleet_cli.registry import Registry
from tests.conftest import Broker
from tests.fleet_cli._collect_sim import Publisher, SimDevice, unique_fleet


@pytest.mark.integration
def test_cmd_round_trip_and_refusal(
    mosquitto: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = unique_fleet("c")
    home = init_fleet(tmp_path / "home", fleet)
    operator_pk = read_private_key(home.operator_key).public_key
    with Registry(home.registry_db) as reg:
        reg.add_device("dev-01")
        dev = SimDevice(fleet, "dev-01", reg.claim_token("dev-01"))
        reg.bind_key("dev-01", dev.signer.public_key)
    dev.birth()
    pub = Publisher(mosquitto.host, mosquitto.port)
    seen: list[dict[int, object]] = []
    lock = threading.Lock()

    def answer(m: Received) -> None:  # the device: verify the operator's command, reply signed
        try:
            o = open_envelope(m.payload, fleet, operator_pk)
        except EnvelopeError:
            return
        if o.kind is not Kind.COMMAND or o.payload[Key.DEV] != "dev-01":
            return
        with lock:
            seen.append(o.payload)
            ok = o.payload[Key.CMD] != "pause"
            r = dev.reply(o.payload[Key.ID], {"ok": ok, "cmd": o.payload[Key.CMD]})
        threading.Thread(target=pub.send, args=(r,)).start()  # never block paho's callback

    device = Link(
        MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id=f"{fleet}-dev"),
        subscriptions=[device_topic(fleet, "dev-01", Channel.CMD)],
        on_message=answer,
    ).connect()
    common = [
        "--home",
        str(home.root),
        "--host",
        mosquitto.host,
        "--port",
        str(mosquitto.port),
        "--password",
        "x",
    ]
    try:
        capsys.readouterr()
        assert main(["cmd", "dev-01", "ping", "rate=5", "mode=fast", *common, "--json", "--wait", "5"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["ok"] is True
        assert doc["reply"]["cmd"] == "ping"
        assert seen[0][Key.ARGS] == {"rate": 5, "mode": "fast"}
        assert seen[0][Key.EXP] > seen[0][Key.T]
        assert main(["cmd", "dev-01", "pause", *common, "--wait", "5"]) == 1
        assert "refused" in capsys.readouterr().out
        # nobody answers for a device whose commands go nowhere: timeout, exit 1, one line
        with Registry(home.registry_db) as reg:
            reg.add_device("dev-02")
            reg.bind_key("dev-02", SimDevice(fleet, "dev-02", None).signer.public_key)
        assert main(["cmd", "dev-02", "status", *common, "--wait", "0.5"]) == 1
        assert capsys.readouterr().err.startswith("error: no signed reply from dev-02")
    finally:
        device.close()
        pub.close()


def test_parse_args() -> None:
    assert parse_args(["a=1", "b=2.5", "c=true", "d=x=y"]) == {"a": 1, "b": 2.5, "c": True, "d": "x=y"}
    with pytest.raises(UsageError):
        parse_args(["novalue"])
    with pytest.raises(UsageError):
        parse_args([f"k{i}=1" for i in range(33)])
