"""`fleet device ...` and the registry behind it: claim tokens, credentials, binding, revocation."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from edge_protocol.keys import Signer
from fleet_cli.app import main
from fleet_cli.home import FleetHome, init_fleet
from fleet_cli.registry import (
    MAX_TAG_VALUE_LEN,
    MAX_TAGS,
    ConflictError,
    NotFoundError,
    Registry,
)
from tests.broker_config._support import reachable
from tests.fleet_cli._hostile import BIDI, CLEAR, NUL, TITLE, assert_terminal_safe


@pytest.fixture
def home(tmp_path: Path) -> FleetHome:
    return init_fleet(reachable(tmp_path) / "h", "demo")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_add_list_show_credentials_revoke(home: FleetHome, capsys: pytest.CaptureFixture[str]) -> None:
    h = ["--home", str(home.root)]
    assert _run(capsys, "device", "add", "dev-01", "--tag", "site=north", "--tag", "rack=3", *h)[0] == 0
    code, out, _ = _run(capsys, "device", "list", "--json", *h)
    listed = json.loads(out)
    assert listed[0]["name"] == "dev-01"
    assert listed[0]["tags"] == {"rack": "3", "site": "north"}
    assert listed[0]["status"] == "awaiting-first-birth"
    code, out, _ = _run(capsys, "device", "show", "dev-01", "--json", *h)
    shown = json.loads(out)
    assert shown["claim_pending"] is True
    # Only `credentials` shows secrets.
    code, out, _ = _run(capsys, "device", "credentials", "dev-01", "--json", *h)
    creds = json.loads(out)
    assert set(creds) == {"username", "password", "claim_token"}
    assert creds["username"] == "dev-01"
    assert len(bytes.fromhex(creds["claim_token"])) == 32
    assert len(creds["password"]) >= 32
    for cmd in (
        ["device", "list"],
        ["device", "list", "--json"],
        ["device", "show", "dev-01"],
        ["device", "show", "dev-01", "--json"],
    ):
        out = _run(capsys, *cmd, *h)[1]
        assert creds["password"] not in out
        assert creds["claim_token"] not in out
    assert _run(capsys, "device", "revoke", "dev-01", *h)[0] == 0
    assert json.loads(_run(capsys, "device", "show", "dev-01", "--json", *h)[1])["status"] == "revoked"
    code, _, err = _run(capsys, "device", "credentials", "dev-01", "--json", *h)
    assert code == 1
    assert "revoked" in err
    assert "already revoked" in _run(capsys, "device", "revoke", "dev-01", *h)[1]
    assert _run(capsys, "device", "add", "dev-01", *h)[0] == 1  # the name stays taken


@pytest.mark.parametrize("name", ["dev+1", "dev#1", "dev/1", "Dev1", "-dev", "a" * 64, "dév"])
def test_bad_names_are_refused(home: FleetHome, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "device", "add", "--home", str(home.root), "--", name)
    assert code == 2
    assert err.startswith("error: invalid device name")


def test_unknown_device(home: FleetHome, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "device", "show", "ghost", "--home", str(home.root))
    assert code == 1
    assert "no device named 'ghost'" in err


def test_tag_limits(home: FleetHome, capsys: pytest.CaptureFixture[str]) -> None:
    h = ["--home", str(home.root)]
    too_many = [x for i in range(MAX_TAGS + 1) for x in ("--tag", f"t{i}=v")]
    assert _run(capsys, "device", "add", "d1", *too_many, *h)[0] == 2
    assert _run(capsys, "device", "add", "d2", "--tag", "k=" + "v" * (MAX_TAG_VALUE_LEN + 1), *h)[0] == 2
    assert _run(capsys, "device", "add", "d3", "--tag", "novalue", *h)[0] == 2
    assert _run(capsys, "device", "add", "d4", "--tag", "Bad/Key=v", *h)[0] == 2
    assert _run(capsys, "device", "add", "d5", "--tag", "k=line\nbreak", *h)[0] == 2


def test_bind_key_retires_the_claim_token(home: FleetHome) -> None:
    key, other = Signer.generate().public_key, Signer.generate().public_key
    with Registry(home.registry_db) as reg:
        reg.add_device("dev-01")
        token = reg.claim_token("dev-01")
        assert token is not None
        assert len(token) == 32
        assert reg.device_key("dev-01") is None
        rec = reg.bind_key("dev-01", key)
        assert rec.status == "enrolled"
        assert reg.claim_token("dev-01") is None
        assert reg.device_credentials("dev-01").claim_token is None
        assert reg.device_key("dev-01") == key
        assert reg.bind_key("dev-01", key).public_key == key  # idempotent (redelivered birth)
        with pytest.raises(ConflictError):
            reg.bind_key("dev-01", other)
        reg.revoke_device("dev-01")
        assert reg.is_revoked("dev-01")
        assert reg.device_key("dev-01") == key  # kept: old results stay verifiable
        with pytest.raises(ConflictError):
            reg.bind_key("dev-01", key)
        with pytest.raises(NotFoundError):
            reg.bind_key("ghost", key)
        assert reg.claim_token("ghost") is None
        assert not reg.is_revoked("ghost")


def test_tokens_and_passwords_are_unique(home: FleetHome) -> None:
    with Registry(home.registry_db) as reg:
        for i in range(20):
            reg.add_device(f"d{i}")
        creds = [reg.device_credentials(f"d{i}") for i in range(20)]
    assert len({c.password for c in creds}) == 20
    assert len({c.claim_token for c in creds}) == 20


def test_registry_is_private_and_wal(home: FleetHome) -> None:
    with Registry(home.registry_db) as reg:
        reg.add_device("dev-01")
        assert reg._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert home.registry_db.stat().st_mode & 0o077 == 0


@pytest.mark.integration
def test_concurrent_writers(home: FleetHome) -> None:
    """A collector binding keys while the CLI adds devices: both finish, nothing is lost."""
    with Registry(home.registry_db) as reg:
        for i in range(30):
            reg.add_device(f"pre-{i}")
    errors: list[BaseException] = []

    def collector() -> None:
        try:
            with Registry(home.registry_db) as reg:
                for i in range(30):
                    reg.bind_key(f"pre-{i}", Signer.generate().public_key)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=collector)
    t.start()
    with Registry(home.registry_db) as reg:
        for i in range(30):
            reg.add_device(f"new-{i}")
    t.join()
    assert errors == []
    with Registry(home.registry_db) as reg:
        devices = reg.list_devices()
    assert len(devices) == 60
    assert sum(d.status == "enrolled" for d in devices) == 30


def test_list_and_show_escape_what_the_registry_holds(
    home: FleetHome, capsys: pytest.CaptureFixture[str]
) -> None:
    """`device add` refuses control characters in tags; a registry written by something else is
    still shown escaped, and --json exact."""
    h = ["--home", str(home.root)]
    assert _run(capsys, "device", "add", "dev-01", *h)[0] == 0
    hostile = {"site": TITLE + CLEAR + BIDI + NUL}
    with sqlite3.connect(home.registry_db) as db:
        db.execute("UPDATE devices SET tags = ? WHERE name = 'dev-01'", (json.dumps(hostile),))
    db.close()
    for cmd in (["device", "list"], ["device", "show", "dev-01"]):
        code, out, _ = _run(capsys, *cmd, *h)
        assert code == 0
        assert_terminal_safe(out, {"site=\\x1b]0;pwned\\x07\\x1b[2J\\u202eevil\\u202c\\u2066x\\u2069n\\x00l"})
        code, out, _ = _run(capsys, *cmd, "--json", *h)
        assert_terminal_safe(out)
        doc = json.loads(out)
        assert (doc[0] if isinstance(doc, list) else doc)["tags"] == hostile
