"""`fleet init` and the fleet home: layout, modes, refusal to overwrite, home resolution, fleet.toml."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edge_protocol.keys import read_private_key
from fleet_cli.app import main
from fleet_cli.errors import FleetError, UsageError
from fleet_cli.home import ENV_HOME, FleetHome, init_fleet, parse_config, render_config
from fleet_cli.registry import Registry
from tests.broker_config._support import reachable


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_creates_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = reachable(tmp_path) / "fleet"
    assert main(["init", "--fleet", "plant-7", "--home", str(home), "--san", "broker.lan"]) == 0
    assert "fleet plant-7 created" in capsys.readouterr().out
    fleet = FleetHome.load(home)
    assert fleet.fleet == "plant-7"
    for key in (fleet.operator_key, fleet.collector_key, fleet.log_key, fleet.ca_key, fleet.registry_db):
        assert _mode(key) == 0o600, key
    assert read_private_key(fleet.operator_key).public_key != read_private_key(fleet.collector_key).public_key
    assert _mode(home) in (0o700, 0o711)
    assert "broker.lan" in fleet.config.broker.sans
    with Registry(fleet.registry_db) as reg:
        assert {u.name: u.role.value for u in reg.list_users()} == {
            "collector": "collector",
            "operator": "operator",
            "watcher": "viewer",  # what `fleet watch` connects as
        }
    assert fleet.config.viewer_user == "watcher"
    assert fleet.config.broker.tls_port == 8883
    assert fleet.config.broker.plain_port == 1884


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = reachable(tmp_path) / "fleet"
    init_fleet(home, "one")
    before = {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()}
    assert main(["init", "--fleet", "two", "--home", str(home)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()} == before
    with pytest.raises(FleetError):
        init_fleet(home, "two")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FleetError, match="other files"):
        init_fleet(other, "x")


def test_init_in_empty_existing_dir(tmp_path: Path) -> None:
    home = reachable(tmp_path) / "empty"
    home.mkdir()
    assert init_fleet(home, "demo").config_path.is_file()


@pytest.mark.parametrize("fleet", ["Demo", "a/b", "x+", "#", "", "_fleet"])
def test_bad_fleet_ids(tmp_path: Path, fleet: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--fleet", fleet, "--home", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "Traceback" not in err
    assert not (tmp_path / "h").exists()


def test_home_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "env"))
    assert FleetHome.resolve(tmp_path / "flag") == tmp_path / "flag"
    assert FleetHome.resolve(None) == tmp_path / "env"
    monkeypatch.delenv(ENV_HOME)
    assert FleetHome.resolve(None).name == "edgeseal"


def test_env_home_is_used_by_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_HOME, str(reachable(tmp_path) / "viaenv"))
    assert main(["init", "--fleet", "envfleet"]) == 0
    assert main(["device", "add", "dev-01"]) == 0
    capsys.readouterr()
    assert main(["device", "list", "--json"]) == 0
    assert [d["name"] for d in json.loads(capsys.readouterr().out)] == ["dev-01"]


def test_missing_fleet_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["device", "list", "--home", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "no fleet in" in err
    assert "hint: create one with `fleet init" in err


def test_config_round_trip_and_validation() -> None:
    cfg = parse_config(render_config(parse_config('fleet = "demo"\ncreated = "x"\n')))
    assert cfg.fleet == "demo"
    assert parse_config(render_config(cfg)) == cfg
    for bad in (
        'fleet = "demo"\n[broker]\ntls_port = "8883"\n',
        'fleet = "demo"\n[broker]\ntls_port = true\n',
        'fleet = "Bad"\n',
        'fleet = "demo"\nversion = 2\n',
        'fleet = "demo"\n[broker]\nhost = "elsewhere"\n',
        'fleet = "demo"\n[broker]\nsans = ["a b"]\n',
        "not toml [",
    ):
        with pytest.raises(UsageError):
            parse_config(bad)


def test_ports_in_fleet_toml_drive_the_render(tmp_path: Path) -> None:
    home = init_fleet(reachable(tmp_path) / "h", "demo", tls_port=18883, plain_port=0)
    s = home.broker_settings()
    assert (s.tls_port, s.plain_port) == (18883, 0)
    with pytest.raises(UsageError):
        init_fleet(tmp_path / "h2", "demo", tls_port=7000, plain_port=7000)
