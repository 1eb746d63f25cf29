"""``fleet cmd`` against a test device that checks the operator's signature and answers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_protocol.envelope import EnvelopeError, open_envelope
from edge_protocol.keys import Signer, read_private_key
from edge_protocol.payload import INT_MAX, Key, Kind
from edge_protocol.topics import Channel, device_topic
from fleet_cli.app import main
from fleet_cli.commands.cmd import parse_args
from fleet_cli.errors import UsageError
from fleet_cli.home import init_fleet
from fleet_cli.mqtt.connection import Connection
from fleet_cli.mqtt.settings import MqttSettings, Received
from fleet_cli.registry import Registry
from tests._mosquitto import Broker
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

    device = Connection(
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


def test_parse_args_values() -> None:
    got = parse_args([f"a={INT_MAX}", f"b=-{INT_MAX}", "c=1e20", "d=-.5", "e=0x10", "f= 5", "g=1_0"])
    assert got == {
        "a": INT_MAX,
        "b": -INT_MAX,
        "c": 1e20,
        "d": -0.5,
        "e": "0x10",
        "f": " 5",
        "g": "1_0",
    }
    assert type(got["c"]) is float
    assert parse_args(["k" * 63 + "=1", "é" * 31 + "=1"]) == {"k" * 63: 1, "é" * 31: 1}  # 63 and 62 bytes


@pytest.fixture(scope="module")
def cmd_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fleet home whose dev-01 has a key bound: a command would be sealed and sent."""
    home = init_fleet(tmp_path_factory.mktemp("cmd") / "home", "cmdargs")
    with Registry(home.registry_db) as reg:
        reg.add_device("dev-01")
        reg.bind_key("dev-01", Signer.from_seed(b"\x01" * 32).public_key)
    return home.root


def run_fleet_cmd(home: Path, *argv: bytes) -> tuple[int, str]:
    """``fleet cmd`` as a shell runs it (bytes argv); nothing listens on port 1, so a sent command fails."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleet_cli.app",
            "cmd",
            *argv,
            b"--home",
            bytes(home),
            b"--port",
            b"1",
            b"--wait",
            b"1",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return r.returncode, r.stderr.decode("utf-8", "replace")


@pytest.mark.parametrize(
    ("arg", "says"),
    [
        ("v=nan", "NaN and infinities cannot be sent"),
        ("v=-Infinity", "NaN and infinities cannot be sent"),
        ("v=INF", "NaN and infinities cannot be sent"),
        ("v=1e400", "is too large for a 64-bit float"),
        (f"v={INT_MAX + 1}", "outside the protocol's integer range"),
        (f"v=-{INT_MAX + 1}", "outside the protocol's integer range"),
        ("v=" + "9" * 5000, "outside the protocol's integer range"),
        ("k" * 64 + "=1", "key at most 63 bytes"),
        ("é" * 32 + "=1", "key at most 63 bytes"),  # 32 characters, 64 bytes
        ("k" * 100_000 + "=1", "key at most 63 bytes"),
    ],
)
def test_cmd_refuses_arguments_a_payload_cannot_carry(
    cmd_home: Path, capsys: pytest.CaptureFixture[str], arg: str, says: str
) -> None:
    argv = ["cmd", "dev-01", "ping", arg, "--home", str(cmd_home), "--port", "1", "--wait", "1"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument "), err
    assert says in err
    assert len(err) < 300  # the argument is quoted cut short, not echoed whole


@pytest.mark.parametrize("arg", [b"v=\xff", b"\xff\xfe=1"])
def test_cmd_refuses_arguments_that_are_not_utf8(cmd_home: Path, arg: bytes) -> None:
    code, err = run_fleet_cmd(cmd_home, b"dev-01", b"ping", arg)
    assert (code, err.startswith("error: argument ")) == (2, True), err
    assert "is not UTF-8 text" in err
    assert "Traceback" not in err


def test_cmd_refuses_an_oversized_command_and_an_unknown_name(
    cmd_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["cmd", *argv, "--home", str(cmd_home), "--port", "1", "--wait", "1"])
        return code, capsys.readouterr().err

    code, err = run("dev-01", "ping", "v=" + "x" * 70_000)
    assert code == 2
    assert err.startswith("error: command 'ping' cannot be sent: TOO_LARGE: envelope of 70162 bytes"), err
    code, err = run("dev-01", "x", "v=nan")
    assert code == 2
    assert "Invalid value" in err
    # a good command gets as far as the broker: the refusals above are the arguments' alone
    code, err = run("dev-01", "ping", f"v={INT_MAX}", "w=nanny", "x=1e308")
    assert (code, err.startswith("error: cannot reach the broker")) == (1, True), err
