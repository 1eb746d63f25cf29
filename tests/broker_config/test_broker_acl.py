"""The hardened broker against a real Mosquitto started from the rendered files (docs/broker.md).

One broker for the module: a fleet with five devices, the default collector and operator users and
a viewer; TLS on a free port, plain listener on another. Non-delivery is proven with markers: every
observer subscribes first, the forbidden publishes go out (each acknowledged), then an allowed
marker follows on the same subscription; anything forbidden that got through arrives before it.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from broker_config.runner import MosquittoProcess
from broker_config.tls import generate_ca
from edge_protocol.topics import fleet_prefix
from fleet_cli.app import main
from fleet_cli.broker import render_broker
from fleet_cli.home import FleetHome
from fleet_cli.registry import Registry
from tests.broker_config._support import Peer, Refused, make_fleet

pytestmark = pytest.mark.integration

DEVICES = [f"dev-0{i}" for i in range(1, 6)]
# Every channel of a device's topic tree: a device may write the first six (its own only) and read
# the last two (its own only).
DEVICE_CHANNELS = ["birth", "res/vib", "hb", "gap", "reply", "state"]
INBOUND_CHANNELS = ["cmd", "ack"]


@dataclass
class Env:
    home: FleetHome
    proc: MosquittoProcess
    tls_port: int
    plain_port: int
    prefix: str
    creds: dict[str, str]

    def peer(self, name: str, *, tls: bool = True, **kw: object) -> Peer:
        port = self.tls_port if tls else self.plain_port
        ca = self.home.ca_cert if tls else None
        return Peer(port, name, self.creds[name], ca=ca, **kw).connect()  # type: ignore[arg-type]


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, str]:
    capsys.readouterr()
    assert main([*argv]) == 0
    out: dict[str, str] = json.loads(capsys.readouterr().out)
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = make_fleet(tmp_path_factory.mktemp("acl"), "acl")
    with Registry(home.registry_db) as reg:
        for d in [*DEVICES, "dev-gone", "dev-kept"]:
            reg.add_device(d)
        reg.add_user("dash", "viewer")
        creds = {d: reg.device_credentials(d).password for d in [*DEVICES, "dev-gone", "dev-kept"]}
        for u in ("collector", "operator", "dash"):
            creds[u] = reg.user_credentials(u).password
    rendered = render_broker(home)
    s = rendered.settings
    proc = MosquittoProcess(s.paths.conf, s.tls_port, log=s.paths.directory / "test.log").start()
    try:
        yield Env(home, proc, s.tls_port, s.plain_port, fleet_prefix(home.fleet), creds)
    finally:
        proc.stop()


def test_credentials_from_the_cli_work_over_tls(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    printed = _cli_json(capsys, "device", "credentials", "dev-01", "--json", "--home", str(env.home.root))
    assert set(printed) == {"username", "password", "claim_token"}
    assert len(bytes.fromhex(printed["claim_token"])) == 32
    peer = Peer(env.tls_port, printed["username"], printed["password"], ca=env.home.ca_cert).connect()
    peer.close()
    user = _cli_json(capsys, "user", "credentials", "dash", "--json", "--home", str(env.home.root))
    assert set(user) == {"username", "password"}
    Peer(env.tls_port, user["username"], user["password"], ca=env.home.ca_cert).connect().close()


def test_cross_device_publishes_are_not_delivered(env: Env) -> None:
    p = env.prefix
    collector = env.peer("collector")
    collector.subscribe(f"{p}/+/#")
    owners = {d: env.peer(d) for d in DEVICES}
    for d, peer in owners.items():
        peer.subscribe(f"{p}/{d}/cmd")
        peer.subscribe(f"{p}/{d}/ack")
    attempts = 0
    for sender in DEVICES:
        for victim in DEVICES:
            if victim == sender:
                continue
            for ch in DEVICE_CHANNELS + INBOUND_CHANNELS:
                retain = ch in ("birth", "state")
                owners[sender].publish(f"{p}/{victim}/{ch}", f"forged by {sender}", retain=retain)
                attempts += 1
    # Markers on allowed paths, after every forged publish was acknowledged by the broker.
    owners["dev-01"].publish(f"{p}/dev-01/hb", b"marker")
    operator = env.peer("operator")
    for d in DEVICES:
        operator.publish(f"{p}/{d}/cmd", b"marker")
    got = collector.collect_until(b"marker")
    for d in DEVICES:
        got += owners[d].collect_until(b"marker")
    for d in DEVICES:
        collector.publish(f"{p}/{d}/ack", b"marker")
        got += owners[d].collect_until(b"marker")
    # Nothing forged was retained either: a fresh subscriber sees no forged birth/state.
    collector.close()
    fresh = env.peer("collector")
    fresh.subscribe(f"{p}/+/birth")
    fresh.subscribe(f"{p}/+/state")
    env.peer("dev-02").publish(f"{p}/dev-02/state", b"marker")
    got += fresh.collect_until(b"marker")
    forged = [m for m in got if m.payload.startswith(b"forged")]
    print(f"cross-device publishes delivered: {len(forged)} of {attempts}")
    assert attempts == 5 * 4 * 8
    assert forged == []
    for peer in [*owners.values(), operator, fresh]:
        peer.close()


def test_device_cannot_read_another_devices_cmd_or_ack(env: Env) -> None:
    p = env.prefix
    snoop = env.peer("dev-01")
    for flt in (f"{p}/dev-02/cmd", f"{p}/dev-02/ack", f"{p}/+/cmd", f"{p}/+/ack", f"{p}/#", "#"):
        snoop.subscribe(flt)
    operator, collector = env.peer("operator"), env.peer("collector")
    sent = 0
    for victim in DEVICES[1:]:
        operator.publish(f"{p}/{victim}/cmd", b"secret cmd")
        collector.publish(f"{p}/{victim}/ack", b"secret ack")
        sent += 2
    operator.publish(f"{p}/dev-01/cmd", b"marker")
    got = snoop.collect_until(b"marker")
    leaked = [m for m in got if m.payload.startswith(b"secret")]
    print(f"cross-device reads delivered: {len(leaked)} of {sent}")
    assert leaked == []
    for peer in (snoop, operator, collector):
        peer.close()


def test_positive_matrix_each_role_can_do_its_job(env: Env) -> None:
    p = env.prefix
    collector, operator, viewer = env.peer("collector"), env.peer("operator"), env.peer("dash")
    device = env.peer("dev-03")
    collector.subscribe(f"{p}/+/#")
    operator.subscribe(f"{p}/+/reply")
    viewer.subscribe(f"{p}/_fleet/#")
    device.subscribe(f"{p}/dev-03/cmd")
    device.subscribe(f"{p}/dev-03/ack")
    checks: dict[str, bool] = {}
    for ch in DEVICE_CHANNELS:
        device.publish(f"{p}/dev-03/{ch}", f"ok {ch}", retain=ch in ("birth", "state"))
    device.publish(f"{p}/dev-03/hb", b"marker")
    got = {m.topic for m in collector.collect_until(b"marker")}
    for ch in DEVICE_CHANNELS:
        checks[f"device writes {ch} -> collector reads"] = f"{p}/dev-03/{ch}" in got
    operator.publish(f"{p}/dev-03/cmd", b"do it")
    collector.publish(f"{p}/dev-03/ack", b"acked")
    device.publish(f"{p}/dev-03/reply", b"done")
    collector.publish(f"{p}/_fleet/verified/dev-03/vib", b"verified")
    collector.publish(f"{p}/_fleet/agg/label", b"agg", qos=0)
    checks["operator writes cmd -> device reads"] = device.saw(b"do it")
    checks["collector writes ack -> device reads"] = device.saw(b"acked")
    checks["device writes reply -> operator reads"] = operator.saw(b"done")
    checks["collector writes _fleet/verified -> viewer reads"] = viewer.saw(b"verified")
    checks["collector writes _fleet/agg -> viewer reads"] = viewer.saw(b"agg")
    plain = env.peer("dev-04", tls=False)
    plain.publish(f"{p}/dev-04/hb", b"over loopback")
    checks["plain loopback listener works"] = collector.saw(b"over loopback")
    print(f"allowed deliveries: {sum(checks.values())} of {len(checks)}")
    assert all(checks.values()), {k: v for k, v in checks.items() if not v}
    for peer in (collector, operator, viewer, device, plain):
        peer.close()


def test_roles_cannot_exceed_their_rights(env: Env) -> None:
    p = env.prefix
    watcher = env.peer("collector")
    watcher.subscribe(f"{p}/+/#")
    dev = env.peer("dev-05")
    dev.subscribe(f"{p}/dev-05/cmd")
    viewer, operator = env.peer("dash"), env.peer("operator")
    viewer.publish(f"{p}/dev-05/cmd", b"forged by viewer")
    viewer.publish(f"{p}/_fleet/verified/dev-05/vib", b"forged by viewer")
    viewer.publish(f"{p}/dev-05/hb", b"forged by viewer")
    operator.publish(f"{p}/dev-05/ack", b"forged by operator")
    operator.publish(f"{p}/dev-05/res/vib", b"forged by operator")
    operator.publish(f"{p}/_fleet/agg/x", b"forged by operator")
    dev.publish(f"{p}/_fleet/verified/dev-05/vib", b"forged by device")
    dev.publish(f"{p}/dev-05/ack", b"forged by device")
    watcher.publish(f"{p}/dev-05/cmd", b"forged by collector")
    watcher.publish(f"{p}/dev-05/hb", b"forged by collector")
    operator.publish(f"{p}/dev-05/cmd", b"marker")
    dev.publish(f"{p}/dev-05/hb", b"marker")
    got = dev.collect_until(b"marker") + watcher.collect_until(b"marker")
    assert [m for m in got if m.payload.startswith(b"forged")] == []
    for peer in (watcher, dev, viewer, operator):
        peer.close()


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_anonymous_and_wrong_password_are_refused(env: Env, tls: bool) -> None:
    port = env.tls_port if tls else env.plain_port
    ca = env.home.ca_cert if tls else None
    with pytest.raises(Refused):
        Peer(port, ca=ca).connect()
    with pytest.raises(Refused):
        Peer(port, "dev-01", "not-the-password", ca=ca).connect()
    with pytest.raises(Refused):
        Peer(port, "nobody", env.creds["dev-01"], ca=ca).connect()
    with pytest.raises(Refused):  # another device's password
        Peer(port, "dev-01", env.creds["dev-02"], ca=ca, v5=False).connect()


def test_client_trusting_another_ca_is_refused(env: Env, tmp_path: Path) -> None:
    """The TLS handshake fails before any credentials are sent (the same check paho and
    mosquitto_pub make with --cafile)."""
    other = tmp_path / "other-ca.crt"
    other.write_bytes(generate_ca("other").cert_pem)
    ctx = ssl.create_default_context(cafile=str(other))
    with (
        socket.create_connection(("127.0.0.1", env.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    # ... while the fleet CA verifies the same server.
    ok = ssl.create_default_context(cafile=str(env.home.ca_cert))
    with socket.create_connection(("127.0.0.1", env.tls_port), timeout=5) as raw:
        ok.wrap_socket(raw, server_hostname="localhost").close()
    if shutil.which("mosquitto_pub"):
        tls = ["-h", "127.0.0.1", "-p", str(env.tls_port), "--cafile", str(other)]
        auth = ["-u", "dev-01", "-P", env.creds["dev-01"], "-t", f"{env.prefix}/dev-01/hb", "-m", "x"]
        result = subprocess.run(["mosquitto_pub", *tls, *auth], check=False, capture_output=True, timeout=10)
        assert result.returncode != 0


@pytest.mark.parametrize("name", ["dev-01/#", "#", "+", "dev-01/+", "dev+01", "a/b", "dev-01/cmd"])
def test_wildcard_or_slash_usernames_are_refused(env: Env, name: str) -> None:
    with pytest.raises(Refused):
        Peer(env.tls_port, name, env.creds["dev-01"], ca=env.home.ca_cert).connect()


@pytest.mark.parametrize("client_id", ["dev-02", "#", "+", "dev-02/#", "edgeseal/v1/acl/dev-02/cmd"])
def test_client_ids_gain_nothing(env: Env, client_id: str) -> None:
    """With use_username_as_clientid the id is replaced: no takeover of dev-02, no extra reads."""
    p = env.prefix
    victim = env.peer("dev-02")
    victim.subscribe(f"{p}/dev-02/cmd")
    intruder = env.peer("dev-01", client_id=client_id)
    intruder.subscribe(f"{p}/dev-02/cmd")
    intruder.subscribe(f"{p}/#")
    operator = env.peer("operator")
    operator.publish(f"{p}/dev-02/cmd", b"for dev-02 only")
    operator.publish(f"{p}/dev-01/cmd", b"marker")
    assert intruder.collect_until(b"marker") == []
    assert victim.messages.get(timeout=5).payload == b"for dev-02 only"
    assert not victim.disconnected.is_set(), "dev-02's session was taken over"
    for peer in (victim, intruder, operator):
        peer.close()


def test_cli_refuses_wildcard_names(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(env.home.root)
    for bad in ("dev+1", "dev#1", "dev/1", "+", "#"):
        assert main(["device", "add", bad, "--home", home]) == 2
        assert main(["user", "add", bad, "--role", "viewer", "--home", home]) == 2
    err = capsys.readouterr().err
    assert "error: invalid device name" in err
    assert "Traceback" not in err


def test_revoked_device_is_refused_after_reload(env: Env) -> None:
    p = env.prefix
    gone = env.peer("dev-gone")
    kept = env.peer("dev-kept")
    with Registry(env.home.registry_db) as reg:
        reg.revoke_device("dev-gone")
    rendered = render_broker(env.home)
    assert "dev-gone" not in rendered.passwd
    assert "dev-gone" not in rendered.acl
    env.proc.reload()
    assert gone.disconnected.wait(5), "a connected revoked device is dropped on reload"
    with pytest.raises(Refused):
        Peer(env.tls_port, "dev-gone", env.creds["dev-gone"], ca=env.home.ca_cert).connect()
    # Everyone else keeps working across the reload.
    collector = env.peer("collector")
    collector.subscribe(f"{p}/dev-kept/hb")
    kept.publish(f"{p}/dev-kept/hb", b"still here")
    assert collector.messages.get(timeout=5).payload == b"still here"
    for peer in (gone, kept, collector):
        peer.close()


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")
def test_matrix_with_mosquitto_clients(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """From outside, as the issue checks it: mosquitto_pub/mosquitto_sub over TLS with the
    credentials `fleet device credentials` prints."""
    p, home = env.prefix, str(env.home.root)
    dev = _cli_json(capsys, "device", "credentials", "dev-04", "--json", "--home", home)
    col = _cli_json(capsys, "user", "credentials", "collector", "--json", "--home", home)
    tls = ["-h", "127.0.0.1", "-p", str(env.tls_port), "--cafile", str(env.home.ca_cert), "-q", "1"]
    # -d prints "received SUBACK" once the subscription is in place (stdbuf: line-buffered, or it
    # would sit in stdio's pipe buffer until exit); -R skips older retained messages.
    sub = subprocess.Popen(
        [
            "stdbuf",
            "-oL",
            "mosquitto_sub",
            *tls,
            "-u",
            col["username"],
            "-P",
            col["password"],
            "-t",
            f"{p}/+/#",
            "-v",
            "-R",
            "-d",
            "-C",
            "2",
            "-W",
            "10",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sub.stdout is not None
    try:
        for line in sub.stdout:
            if "received SUBACK" in line:
                break

        def pub(topic: str, msg: str) -> int:
            cmd = [
                "mosquitto_pub",
                *tls,
                "-u",
                dev["username"],
                "-P",
                dev["password"],
                "-t",
                topic,
                "-m",
                msg,
            ]
            return subprocess.run(cmd, check=False, timeout=10).returncode

        assert pub(f"{p}/dev-04/res/vib", "allowed") == 0
        assert pub(f"{p}/dev-05/res/vib", "forged") == 0  # PUBACKed, never delivered
        assert pub(f"{p}/dev-04/hb", "allowed") == 0
        out, _ = sub.communicate(timeout=15)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    received = [line for line in out.splitlines() if line.startswith(p)]
    assert received == [f"{p}/dev-04/res/vib allowed", f"{p}/dev-04/hb allowed"]
    refused = subprocess.run(
        ["mosquitto_pub", *tls, "-u", "dev-04", "-P", "wrong", "-t", f"{p}/dev-04/hb", "-m", "x"],
        check=False,
        timeout=10,
        capture_output=True,
    )
    assert refused.returncode != 0


def test_fleet_link_connects_and_is_refused_cleanly(env: Env) -> None:
    """fleet_cli.mqtt.connection.Connection, as `fleet collect` and `fleet cmd` use it, against the
    hardened broker: the right password connects over TLS with MQTT 5; a wrong one is one MqttError
    naming the refusal, with no 3.1.1 retry and no paho thread left behind."""
    import threading

    from fleet_cli.mqtt.connection import Connection
    from fleet_cli.mqtt.settings import MqttError, MqttSettings, MqttVersion

    base = MqttSettings(
        host="localhost", port=env.tls_port, username="collector", tls_ca=env.home.ca_cert,
        protocol=MqttVersion.AUTO, client_id="link-test",
    )  # fmt: skip
    threads = threading.active_count()
    link = Connection(
        replace(base, password=env.creds["collector"]), subscriptions=[f"{env.prefix}/+/res/+"]
    ).connect()
    assert link.protocol is MqttVersion.V5
    assert link.connected.is_set()
    link.close()
    with pytest.raises(MqttError, match="refused MQTT 5") as info:
        Connection(replace(base, password="wrong"), subscriptions=[f"{env.prefix}/+/res/+"]).connect(
            timeout_s=5
        )
    assert "3.1.1" not in str(info.value)
    deadline = time.monotonic() + 5
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == threads
