"""`fleet user ...`: roles, credentials, and a shared name space with devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet_cli.app import main
from fleet_cli.home import FleetHome, init_fleet
from fleet_cli.registry import Registry
from tests.broker_config._support import reachable


@pytest.fixture
def home(tmp_path: Path) -> FleetHome:
    return init_fleet(reachable(tmp_path) / "h", "demo")


def test_add_and_credentials(home: FleetHome, capsys: pytest.CaptureFixture[str]) -> None:
    h = ["--home", str(home.root)]
    for name, role in (("dash", "viewer"), ("collector-b", "collector"), ("ops", "operator")):
        assert main(["user", "add", name, "--role", role, *h]) == 0
    capsys.readouterr()
    assert main(["user", "credentials", "dash", "--json", *h]) == 0
    creds = json.loads(capsys.readouterr().out)
    assert set(creds) == {"username", "password"}
    assert creds["username"] == "dash"
    assert main(["user", "list", "--json", *h]) == 0
    listed = {u["name"]: u["role"] for u in json.loads(capsys.readouterr().out)}
    assert listed == {
        "collector": "collector",
        "collector-b": "collector",
        "dash": "viewer",
        "operator": "operator",
        "ops": "operator",
        "watcher": "viewer",  # created by `fleet init`
    }
    assert creds["password"] not in json.dumps(listed)


def test_roles_are_checked(home: FleetHome, capsys: pytest.CaptureFixture[str]) -> None:
    h = ["--home", str(home.root)]
    assert main(["user", "add", "x", "--role", "device", *h]) == 2
    assert main(["user", "add", "x", "--role", "admin", *h]) == 2
    assert main(["user", "add", "x", *h]) == 2  # --role is required
    assert "error" in capsys.readouterr().err.lower()


def test_users_and_devices_share_one_name_space(home: FleetHome, capsys: pytest.CaptureFixture[str]) -> None:
    h = ["--home", str(home.root)]
    assert main(["device", "add", "dev-01", *h]) == 0
    assert main(["user", "add", "dev-01", "--role", "viewer", *h]) == 1
    assert main(["device", "add", "collector", *h]) == 1
    err = capsys.readouterr().err
    assert "dev-01 is already a device" in err
    assert "collector is already a user" in err


@pytest.mark.parametrize("name", ["a+b", "a#", "a/b", "+", "#", "UP"])
def test_wildcard_names_are_refused(home: FleetHome, name: str) -> None:
    assert main(["user", "add", name, "--role", "viewer", "--home", str(home.root)]) == 2


def test_revoked_user_has_no_credentials(home: FleetHome, capsys: pytest.CaptureFixture[str]) -> None:
    h = ["--home", str(home.root)]
    assert main(["user", "add", "dash", "--role", "viewer", *h]) == 0
    assert main(["user", "revoke", "dash", *h]) == 0
    assert main(["user", "credentials", "dash", *h]) == 1
    with Registry(home.registry_db) as reg:
        _, users = reg.broker_accounts()
    assert [u.revoked for u in users if u.username == "dash"] == [True]
