"""``fleet watch``: verified results republished by a running collector, filtered by device."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from broker_config.accounts import Role
from fleet_cli.app import main
from fleet_cli.collector.store import default_store_path
from fleet_cli.commands import watch as watch_cmd
from fleet_cli.commands.watch import format_result
from fleet_cli.errors import FleetError
from fleet_cli.mqtt.connection import CONNECT_TIMEOUT_S, Connection
from fleet_cli.registry import Registry
from tests._mosquitto import Broker
from tests.fleet_cli._collect_sim import Publisher, add_devices, collector_config, running, unique_fleet
from tests.fleet_cli._hostile import BIDI, CLEAR, LABELS, NUL, RED, SHOWN, TITLE, assert_terminal_safe


@pytest.fixture
def subscribed(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once the watcher's subscription is acknowledged (Connection.connect waits for the SUBACK): results
    are republished at QoS 0, so one sent earlier is not seen, however long a test sleeps."""
    event = threading.Event()

    class _Link(Connection):
        def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> Connection:
            link = super().connect(timeout_s)
            event.set()
            return link

    monkeypatch.setattr(watch_cmd, "Connection", _Link)
    return event


@pytest.mark.integration
def test_watch_prints_verified_results(
    mosquitto: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str], subscribed: threading.Event
) -> None:
    from fleet_cli.home import init_fleet

    fleet = unique_fleet("w")
    home = init_fleet(tmp_path / "home", fleet)
    with Registry(home.registry_db) as reg:
        devs = add_devices(reg, fleet, ["dev-01", "dev-02"])
        cfg = collector_config(fleet, mosquitto.host, mosquitto.port, default_store_path(home.root))
        pub = Publisher(mosquitto.host, mosquitto.port)
        with running(cfg, reg) as c:
            pub.send(*(d.birth() for d in devs.values()))
            assert c.wait_idle()
            argv = [
                "watch",
                "--home",
                str(home.root),
                "--host",
                mosquitto.host,
                "--port",
                str(mosquitto.port),
            ]
            argv += ["--user", "viewer", "--password", "x", "--device", "dev-02", "--json", "--count", "3"]
            argv += ["--timeout", "10"]
            rc: list[int] = []
            t = threading.Thread(target=lambda: rc.append(main(argv)))
            t.start()
            assert subscribed.wait(10)
            pub.send(
                *(devs["dev-01"].result() for _ in range(3)), *(devs["dev-02"].result() for _ in range(3))
            )
            t.join(15)
        pub.close()
    assert rc == [0]
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(d["dev"], d["seq"], d["verdict"]) for d in lines] == [
        ("dev-02", s, "ACCEPTED") for s in (1, 2, 3)
    ]
    assert "dev-02/vib" in format_result(lines[0])


def test_watch_defaults_to_the_viewer_fleet_init_created(tmp_path: Path) -> None:
    from fleet_cli.commands.watch import _default_viewer
    from fleet_cli.home import init_fleet

    home = init_fleet(tmp_path / "home", unique_fleet("w"))
    assert _default_viewer(home) == "watcher"
    with Registry(home.registry_db) as reg:
        reg.add_user("dash", Role.VIEWER)
        assert _default_viewer(home) == "watcher", "fleet.toml's viewer comes first"
        reg.revoke_user("watcher")
        assert _default_viewer(home) == "dash", "any active viewer when that one is revoked"
        reg.revoke_user("dash")
    with pytest.raises(FleetError, match="no viewer user"):
        _default_viewer(home)


def test_format_result_escapes_device_text_and_survives_any_value() -> None:
    label = CLEAR + TITLE + RED + BIDI + NUL
    doc = {"t_received": 1_760_000_000_000, "dev": "dev-01", "pipe": "vib", "boot": 1, "seq": 2}
    doc |= {"msg_id": TITLE + "ab", "model": "11" * 32, "out": {"label": label, "score": 0.5}}
    line = format_result(doc)
    assert_terminal_safe(line, {"\\x1b[2J\\x1b]0;pwned\\x07\\x1b[31m\\u202eevil", "msg \\x1b]0;pwned\\x07ab"})
    assert line.startswith("08:53:20.000  dev-01/vib  boot 1 seq 2")
    assert len(format_result({**doc, "out": {"label": "x" * 100_000}})) < 300, "a label is cut"
    for t in ("soon", 10**30, -(10**30), float("nan"), True, None):  # not a usable time: no exception
        assert_terminal_safe(format_result({**doc, "t_received": t}))
    assert_terminal_safe(format_result({"dev": ["\x1b"], "boot": {"\x1b": 1}, "out": ["x"]}))


@pytest.mark.integration
def test_watch_prints_device_text_escaped_and_json_exact(
    mosquitto: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str], subscribed: threading.Event
) -> None:
    from fleet_cli.home import init_fleet

    fleet = unique_fleet("w")
    home = init_fleet(tmp_path / "home", fleet)
    argv = ["watch", "--home", str(home.root), "--host", mosquitto.host, "--port", str(mosquitto.port)]
    argv += ["--user", "viewer", "--password", "x", "--count", str(len(LABELS)), "--timeout", "10"]
    with Registry(home.registry_db) as reg:
        dev = add_devices(reg, fleet, ["dev-01"])["dev-01"]
        cfg = collector_config(fleet, mosquitto.host, mosquitto.port, default_store_path(home.root))
        pub = Publisher(mosquitto.host, mosquitto.port)
        with running(cfg, reg) as c:
            pub.send(dev.birth())
            assert c.wait_idle()
            outputs = []
            for extra in ([], ["--json"]):
                rc: list[int] = []
                t = threading.Thread(target=lambda a=argv + extra, r=rc: r.append(main(a)))
                subscribed.clear()
                t.start()
                assert subscribed.wait(10)
                pub.send(*(dev.result(label=label) for label in LABELS))
                t.join(15)
                assert rc == [0]
                outputs.append(capsys.readouterr().out)
        pub.close()
    plain, as_json = outputs
    assert_terminal_safe(plain, SHOWN - {"[/]\\x1b]0;pwned\\x07"})
    assert_terminal_safe(as_json)  # json.dumps escapes: exact, yet no raw control character
    assert [json.loads(x)["out"]["label"] for x in as_json.splitlines()] == list(LABELS)
