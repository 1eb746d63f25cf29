"""``fleet watch``: verified results republished by a running collector, filtered by device."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from broker_config.accounts import Role
from fleet_cli.app import main
from fleet_cli.errors import FleetError
from fleet_cli.registry import Registry
from fleet_cli.store import default_store_path
from fleet_cli.watch_cmd import format_result
from tests.conftest import Broker
from tests.fleet_cli._collect_sim import Publisher, add_devices, collector_config, running, unique_fleet


@pytest.mark.integration
def test_watch_prints_verified_results(
    mosquitto: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
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
            import time

            time.sleep(0.5)  # let the watcher subscribe
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
    from fleet_cli.home import init_fleet
    from fleet_cli.watch_cmd import _default_viewer

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
